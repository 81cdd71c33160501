"""datakeg: documentation folder -> leak-free question/answer fine-tuning datasets."""

__version__ = "0.1.0"
