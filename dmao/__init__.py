"""dmao: CTC speech recognition encoders that re-allocate their own parameters during training."""

__version__ = "0.1.0"
