"""The package version, in a module of its own so that low modules (results, checkpoints, the
CLI's ``--version``) can read it without importing the whole package (and torch)."""

__version__ = "0.2.0"
