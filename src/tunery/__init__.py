"""tunery: from a labelled text file to a fine-tuned, evaluated, reusable transformer model."""

__version__ = "0.1.0"
