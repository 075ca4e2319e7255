"""autoprompt_py: discrete prompt search and scoring for masked language models."""

__version__ = "0.1.0"
