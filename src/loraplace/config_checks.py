"""The checks of a study config's raw mapping, before its settings are built: unknown keys
(with a did-you-mean), the named strategies and automatic entries, and the top-level keys.

Each check appends what it finds to a list of problems, so that
:func:`loraplace.config.load_study_config` reports them all at once.
"""

from __future__ import annotations

import difflib
import re
from dataclasses import asdict, fields

from loraplace.errors import ConfigError, LoraplaceError, one_line, short_repr
from loraplace.settings import is_int
from loraplace.store import safe_name
from loraplace.strategy import parse_strategy

__all__ = [
    "auto_entry",
    "build_section",
    "check_top_level",
    "clip",
    "named_strategies",
    "unknown_keys",
]

_PLAIN_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


def clip(text: str, limit: int = 40) -> str:
    """A user's key or name for an error message: one line, at most ``limit`` characters."""
    text = one_line(text, limit)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def unknown_keys(keys, valid, where: str) -> list[str]:
    problems = []
    for key in keys:
        if key not in valid:
            close = difflib.get_close_matches(str(key), list(valid), n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else f" (valid: {', '.join(valid)})"
            problems.append(f"unknown key '{where}{clip(str(key))}'{hint}")
    return problems


def build_section(cls, raw, key: str, problems: list[str]):
    if raw is None:
        return cls()
    if not isinstance(raw, dict):
        problems.append(f"'{key}' must be a mapping, got {short_repr(raw)}")
        return None
    valid = [f.name for f in fields(cls)]
    problems += unknown_keys(raw, valid, f"{key}.")
    try:
        return cls(**{k: v for k, v in raw.items() if k in valid})
    except ConfigError as exc:
        problems += exc.problems
    except TypeError as exc:
        problems.append(f"'{key}': {short_repr(str(exc), 200)}")
    return None


def named_strategies(raw, problems: list[str]) -> dict[str, str]:
    """Named strategies from a mapping (or a list of specs); duplicates and names that would
    share a run directory are refused, never silently merged."""
    if raw is None:
        return {"baseline": "all"}
    if isinstance(raw, list):
        named: dict[str, str] = {}
        for item in raw:
            if not isinstance(item, str):
                problems.append(f"strategies: list entries must be strings, got {short_repr(item)}")
                continue
            if item in named:
                problems.append(f"strategies: {short_repr(item)} is listed twice")
            named[item] = item
        raw = named
    if not isinstance(raw, dict) or not raw:
        problems.append(
            f"'strategies' must be a non-empty mapping of name: strategy, got {short_repr(raw)}"
        )
        return {}
    out: dict[str, str] = {}
    dirs: dict[str, str] = {}
    for name, spec in raw.items():
        if not isinstance(name, str) or not name.strip():
            problems.append(
                f"strategies: a name must be a non-empty string, got {short_repr(name)}"
            )
            continue
        if isinstance(spec, dict):
            spec = auto_entry(spec, f"strategies.{clip(name)}", raw, problems)
            if spec is None:
                continue
        elif not isinstance(spec, str):
            problems.append(
                f"strategies.{clip(name)}: expected a strategy string or {{auto: ...}}, got "
                f"{short_repr(spec)}"
            )
            continue
        else:
            try:
                parse_strategy(spec)
            except LoraplaceError as exc:
                problems.append(f"strategies.{clip(name)}: {exc}")
                continue
        other = dirs.get(safe_name(name))
        if other is not None:
            problems.append(
                f"strategies: names {short_repr(other, 40)} and {short_repr(name, 40)} map to the "
                f"same run directory '{safe_name(name)}'; rename one"
            )
            continue
        dirs[safe_name(name)] = name
        out[name] = spec
    return out


def auto_entry(entry: dict, where: str, named: dict, problems: list[str]) -> dict | None:
    """An automatic strategy ``{auto: {...}}``, normalised with every default, or ``None``."""
    from loraplace.probe import AutoSpec

    if set(entry) != {"auto"}:
        problems.append(f"{where}: a mapping must be {{auto: {{method: ..., budget: ...}}}}")
        return None
    try:
        spec = AutoSpec.from_mapping(entry["auto"], where)
    except ConfigError as exc:
        problems.extend(exc.problems)
        return None
    budget = spec.budget
    if isinstance(budget, str) and not isinstance(named.get(budget, ""), str):
        problems.append(f"{where}.auto.budget names another automatic strategy ({budget!r})")
        return None
    if isinstance(budget, str) and budget not in named:
        try:
            parse_strategy(budget)
        except LoraplaceError as exc:
            problems.append(f"{where}.auto.budget is not a strategy of the study: {exc}")
            return None
    return {"auto": asdict(spec)}


def check_top_level(raw: dict, strategies: dict, problems: list[str]) -> None:
    name = raw.get("name", "study")
    if not isinstance(name, str) or not _PLAIN_NAME.match(name):
        problems.append(
            f"'name' must be a plain name (letters, digits, '.', '_', '-'; no path), got "
            f"{short_repr(name)}; use --out to choose where the study is written"
        )
    model = raw.get("model", "smollm2-135m")
    if not isinstance(model, str) or not model.strip():
        problems.append(f"'model' must be a non-empty string, got {short_repr(model)}")
    reference = raw.get("reference")
    if reference is not None and not isinstance(reference, str):
        problems.append(f"reference must be a strategy name, got {short_repr(reference)}")
    elif reference is not None and reference not in strategies:
        close = difflib.get_close_matches(str(reference), [str(s) for s in strategies], n=1)
        hint = f"did you mean '{close[0]}'? " if close else ""
        problems.append(
            f"reference {short_repr(reference)} is not a strategy of this study "
            f"({hint}strategies: {', '.join(strategies)})"
        )
    match = raw.get("match_params")
    if isinstance(match, (list, dict)):
        problems.append(
            f"match_params must be an integer or a strategy name, got {short_repr(match)}"
        )
    elif (
        match is not None
        and not (is_int(match) and match > 0)
        and not (isinstance(match, str) and match in strategies)
    ):
        problems.append(
            "match_params must be a positive integer or a strategy name "
            f"({', '.join(strategies)}), got {short_repr(match)}"
        )
    if match is not None and any(isinstance(s, dict) for s in strategies.values()):
        problems.append("match_params cannot be used with automatic strategies (they fit a budget)")
    ranks = raw.get("ranks")
    if ranks is not None:
        if not isinstance(ranks, list) or not ranks or not all(is_int(r) and r >= 1 for r in ranks):
            problems.append(
                f"ranks must be a non-empty list of integers >= 1, got {short_repr(ranks)}"
            )
        elif len(set(ranks)) != len(ranks):
            problems.append(f"ranks has duplicates: {short_repr(ranks)}")
        if match is not None:
            problems.append("ranks and match_params both choose ranks; use one of them")
    device = raw.get("device")
    if device is not None and not (
        isinstance(device, str) and (device == "cpu" or re.fullmatch(r"cuda(:\d+)?", device))
    ):
        problems.append(f"device must be 'cpu' or 'cuda', got {short_repr(device)}")
    tracking = raw.get("tracking", [])
    if not isinstance(tracking, list) or not all(isinstance(t, str) for t in tracking):
        problems.append(f"tracking must be a list of backend names, got {short_repr(tracking)}")
    else:
        from loraplace.tracking import check_backends

        try:
            check_backends(tracking)
        except LoraplaceError as exc:
            problems.append(f"tracking: {exc}")
    trust = raw.get("trust_remote_code", False)
    if not isinstance(trust, bool):
        problems.append(f"trust_remote_code must be true or false, got {short_repr(trust)}")
    reuse = raw.get("reuse", [])
    if not isinstance(reuse, list) or not all(isinstance(r, str) and r for r in reuse):
        problems.append(f"reuse must be a list of study directories, got {short_repr(reuse)}")
