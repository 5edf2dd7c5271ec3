"""One training run: the loop, evaluation, the frozen-prefix cache, the run and its record."""
