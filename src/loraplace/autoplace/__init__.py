"""Automatic placement: score every adaptable module with a short probe, then choose the
modules most worth adapting under a trainable-parameter budget."""
