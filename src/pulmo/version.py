"""The version of pulmo (one place; ``pulmo.__version__`` re-exports it)."""

__version__ = "0.1.0"
