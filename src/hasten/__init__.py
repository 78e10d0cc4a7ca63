"""hasten: reach a target pre-training loss with less compute."""

__version__ = "0.1.0"
