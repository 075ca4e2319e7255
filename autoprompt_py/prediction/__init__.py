"""The API under ``autoprompt predict``: a found, written or shipped prompt run over new data, streamed.

``config`` holds the settings (``PredictConfig``), ``prompts`` loads the prompt members (a
registry of prompt sources), ``reader`` streams input rows in windows, ``run`` scores each
window and ``writer`` writes the rows in input order.
"""
