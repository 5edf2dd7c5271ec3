"""The ``loraplace`` command's options: value parsers, the model options, and the options
derived from the settings dataclasses (:mod:`loraplace.settings`).

Each settings field becomes one option of ``run`` (and the ``data`` ones of ``place``), with its
field doc as help text and no default, so each default has one source and only what the user
gives overrides the config. :func:`settings_overrides` reads those options back, by section.
"""

from __future__ import annotations

import argparse
from dataclasses import fields

from loraplace.errors import short_repr
from loraplace.settings import (
    STUDY_ONLY,
    DataConfig,
    EvalSettings,
    LoraSettings,
    TrainingSettings,
    field_help,
    keys_of_scope,
)

__all__ = [
    "add_model_options",
    "add_settings_options",
    "int_list",
    "positive_int",
    "settings_overrides",
    "word_list",
]


# --- option values ----------------------------------------------------------------------------


def positive_int(text: str) -> int:
    """An integer of at least 1 (``--rank``)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got '{text}'") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def int_list(text: str) -> list[int]:
    """Comma-separated integers (``--ranks 2,8,32``, ``--seeds 0,1,2``)."""
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated integers, got {short_repr(text)}"
        ) from None


def _float_list(text: str) -> list[float]:
    """Comma-separated numbers (``--checkpoints 0.25,0.5``)."""
    try:
        return [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated numbers, got {short_repr(text)}"
        ) from None


def word_list(text: str) -> list[str]:
    """Comma-separated words, blanks dropped (``--track mlflow,tensorboard``)."""
    return [x.strip() for x in text.split(",") if x.strip()]


# --- the model options ------------------------------------------------------------------------


def add_model_options(p: argparse.ArgumentParser, *, required: bool) -> None:
    """``--model`` and ``--trust-remote-code``, shared by the subcommands that load a model."""
    p.add_argument(
        "--model",
        required=required,
        default=None,
        help="built-in alias (smollm2-135m, gemma3-270m), local directory or hub id",
    )
    p.add_argument(
        "--trust-remote-code",
        action="store_true",
        help="let the model directory's own Python code run (off by default; see the README)",
    )


# --- options derived from the settings dataclasses --------------------------------------------


#: Settings fields ``run`` does not take as options (a run has one seed and no grid).
def _not_run_options() -> set[tuple[str, str]]:
    return {
        (section, name)
        for section, cls in _settings_sections()
        for name in keys_of_scope(cls, STUDY_ONLY)
    }


#: Option names that would otherwise collide or read badly.
_OPTION_NAMES = {("eval", "batch_size"): "eval-batch-size", ("data", "format"): "data-format"}


def _settings_sections():
    return (
        ("data", DataConfig),
        ("lora", LoraSettings),
        ("training", TrainingSettings),
        ("eval", EvalSettings),
    )


def _option_type(default):
    if isinstance(default, bool):
        return None
    if isinstance(default, int):
        return int
    if isinstance(default, float):
        return float
    return str


def add_settings_options(parser: argparse.ArgumentParser, sections=None) -> None:
    """One option per settings field (``--max-length``, ``--learning-rate``, ...), default unset
    so that only what the user gives overrides the config (or the dataclass default)."""
    for section, cls in _settings_sections():
        if sections is not None and section not in sections:
            continue
        group = parser.add_argument_group(f"{section} settings (the study YAML's '{section}:')")
        for f in fields(cls):
            if (section, f.name) in _not_run_options():
                continue
            flag = "--" + _OPTION_NAMES.get((section, f.name), f.name.replace("_", "-"))
            if f.name == "checkpoints":
                kind = _float_list
            elif section == "data" and f.name == "format":
                kind = str
            else:
                kind = _option_type(f.default)
            group.add_argument(
                flag,
                dest=f"{section}.{f.name}",
                metavar=f.name.upper(),
                type=kind,
                default=None,
                help=field_help(cls, f.name),
            )


def settings_overrides(args) -> dict:
    """The settings options given on the command line, as ``{section: {field: value}}``."""
    out: dict = {}
    for dest, value in vars(args).items():
        if "." in dest and value is not None:
            section, name = dest.split(".", 1)
            out.setdefault(section, {})[name] = value
    return out
