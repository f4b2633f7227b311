"""image-auditor: measure what is wrong with an image dataset before fine-tuning on it."""

__version__ = "0.1.0"
