"""The one exception type the CLI turns into a one-line message and a non-zero exit."""

from __future__ import annotations

__all__ = ["LoraplaceError", "StrategyError", "ArchitectureError", "ConfigError", "DataError"]


class LoraplaceError(Exception):
    """A problem with the user's input. Its message is shown as one line, without a traceback."""


class StrategyError(LoraplaceError):
    """A strategy string that does not parse, or does not fit the model."""


class ArchitectureError(LoraplaceError):
    """A model whose decoder layers or projections cannot be classified."""


class ConfigError(LoraplaceError):
    """A study config with one or more problems (all reported at once)."""

    def __init__(self, problems: list[str]):
        self.problems = list(problems)
        if len(self.problems) == 1:
            message = f"invalid study config: {self.problems[0]}"
        else:
            message = f"invalid study config ({len(self.problems)} problems): " + "; ".join(
                self.problems
            )
        super().__init__(message)


class DataError(LoraplaceError):
    """A data file or dataset that cannot be read as the requested format."""
