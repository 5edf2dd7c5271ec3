"""Experiment tracking: a study's runs mirrored to MLflow and/or TensorBoard."""
