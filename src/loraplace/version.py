"""The version of loraplace, below every module that records it."""

__version__ = "0.2.0"
