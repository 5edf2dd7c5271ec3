"""Studies: the runner, learning-rate selection, the directory's identity and lock, executors,
the estimate, reuse, status and export."""
