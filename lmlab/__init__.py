"""lmlab: train, evaluate, compare and report small language models."""

__version__ = "0.1.0"
