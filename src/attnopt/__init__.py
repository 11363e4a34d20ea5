"""attnopt: few-shot image classification with a learned LSTM optimizer and attention."""

__version__ = "0.1.0"
