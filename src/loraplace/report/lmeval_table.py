"""The report's lm-evaluation-harness table, from the scores ``loraplace evaluate`` wrote.

Each finished final run may hold ``lm_eval.json`` and the study ``lm_eval_base.json``
(docs/FORMATS.md). The table gives, per condition and task, each metric's mean over the seeds
scored and how often lm-eval chose the answer loraplace's scorer chose; the base model's row
comes first. A study never scored with lm-eval has no table.
"""

from __future__ import annotations

from loraplace import store
from loraplace.report.load import Study
from loraplace.report.render import DASH, Table, code, who, who_headers
from loraplace.store import RunKey

__all__ = ["lm_eval_table"]


def _cells(found: list[dict], task: str, metrics: list[str]) -> list[str]:
    scores = [f["tasks"][task] for f in found if task in f.get("tasks", {})]
    cells = []
    for metric in metrics:
        values = [s["metrics"][metric] for s in scores if metric in s.get("metrics", {})]
        cells.append(f"{100 * sum(values) / len(values):.1f}%" if values else DASH)
    agreement = [s["agreement"] for s in scores if s.get("agreement")]
    if agreement:
        same = sum(a.get("same_choice", a.get("same_number", 0)) for a in agreement)
        cells.append(f"{same} / {sum(a['problems'] for a in agreement)}")
    else:
        cells.append(DASH)
    return [str(len(scores)), *cells]


def lm_eval_table(study: Study) -> Table | None:
    """lm-eval's scores of the base model and of each condition's runs, per task."""
    base = store.read_json(study.root / store.LMEVAL_BASE_FILE)
    by_cond = []
    for cond in study.conditions:
        found = []
        for record in study.runs(cond, "finished"):
            key = RunKey(cond.name, record["seed"], cond.rank)
            scores = store.read_json(key.run_dir(study.root) / store.LMEVAL_FILE)
            if scores is not None:
                found.append(scores)
        by_cond.append((cond, found))
    every = ([base] if base else []) + [f for _, found in by_cond for f in found]
    if not every:
        return None
    tasks = sorted({t for f in every for t in f.get("tasks", {})})
    metrics = sorted({m for f in every for s in f.get("tasks", {}).values() for m in s["metrics"]})
    headers = who_headers(study) + ["Task", "Seeds", *metrics, "Same answer as loraplace"]
    blank = [""] * (len(who_headers(study)) - 1)
    rows = []
    for task in tasks:
        if base and task in base.get("tasks", {}):
            _, *cells = _cells([base], task, metrics)
            rows.append(["base model", *blank, code(task), DASH, *cells])
        for cond, found in by_cond:
            if any(task in f.get("tasks", {}) for f in found):
                rows.append(who(study, cond) + [code(task), *_cells(found, task, metrics)])
    version = next((f.get("lm_eval") for f in every if f.get("lm_eval")), None)
    note = (
        f"Scored by lm-evaluation-harness {version or ''} with `loraplace evaluate --lm-eval` "
        "(each metric's mean over the seeds scored; the problems are the task's eval split, or "
        "its first `--limit`). The last column counts the problems, over the seeds, on which "
        "lm-eval chose the answer loraplace's own scorer chose (where the study's data is that "
        "task)."
    )
    return Table("lm-evaluation-harness", headers, rows, note)
