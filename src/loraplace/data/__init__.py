"""Fine-tuning data: sources and splits, file formats, and batching."""
