"""xattn: hyperparameter studies of cross-attention models of brain connectivity."""

__version__ = "0.1.0"
