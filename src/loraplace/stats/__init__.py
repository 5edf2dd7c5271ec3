"""Statistics: tests, measures, verdicts and budget curves, pure functions of numbers."""
