"""Numerics check: does bf16 move a study's results by more than a seed does?

Reads two finished studies of one design that differ only in ``training.precision`` and prints,
for each condition, the eval loss in each precision, the per-seed difference bf16 - fp32 (its
mean and its largest size over the seeds), and the seed-to-seed SD of the fp32 runs beside it;
then every verdict of each study's report (against the reference, the lowest-loss finding and
the all-pairs family), side by side, and whether all of them are the same.

Run::

    loraplace study --out runs/numerics-fp32 --precision fp32
    loraplace study --out runs/numerics-bf16 --precision bf16
    python bench/numerics.py runs/numerics-fp32 runs/numerics-bf16
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

from loraplace.config.study import StudyConfig, load_study_config
from loraplace.report.analysis import analyse
from loraplace.report.load import load_study
from loraplace.settings import NO_RUN, keys_of_scope


def _design(study_dir: Path) -> dict:
    """What the study's runs depend on: its validated config (keys added since it was written
    take their defaults) without the settings that touch no run (name, report, tracking) and
    without the precision."""
    raw = load_study_config(study_dir / "study.yaml", check_model=False).to_dict()
    for key in ("name", *keys_of_scope(StudyConfig, NO_RUN)):
        raw.pop(key, None)
    raw.get("training", {}).pop("precision", None)
    return raw


def _verdicts(analysis) -> dict[str, str]:
    """Every verdict the report states, keyed by what it compares."""
    out = {}
    for label, c in analysis.comparisons.items():
        out[f"{label} vs {c.reference}"] = f"{c.verdict}{'/' + c.direction if c.direction else ''}"
    if analysis.best is not None:
        for label, c in analysis.best.against.items():
            out[f"lowest: {analysis.best.best} vs {label}"] = c.verdict
    for c in analysis.pairwise:
        out[f"pair: {c.strategy} vs {c.reference}"] = c.verdict
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("fp32", type=Path)
    parser.add_argument("bf16", type=Path)
    args = parser.parse_args()
    if _design(args.fp32) != _design(args.bf16):
        print("the two studies differ in more than the precision; refusing to compare")
        return 2
    studies = {p: load_study(d) for p, d in (("fp32", args.fp32), ("bf16", args.bf16))}
    print(
        "| condition | fp32 mean (SD) | bf16 mean (SD) | Δ bf16−fp32, mean | max |Δ| over "
        "seeds | seed SD (fp32) | max |Δ| / SD |"
    )
    print("|---|---|---|---|---|---|---|")
    moved = []
    for cond in studies["fp32"].conditions:
        other = next(c for c in studies["bf16"].conditions if c.label == cond.label)
        a, b = studies["fp32"].losses(cond), studies["bf16"].losses(other)
        seeds = sorted(set(a) & set(b))
        diffs = [b[s] - a[s] for s in seeds]
        sd = statistics.stdev(a[s] for s in seeds) if len(seeds) > 1 else float("nan")
        worst = max(abs(d) for d in diffs)
        moved.append(worst > sd)
        print(
            f"| {cond.label} | {statistics.mean(a.values()):.4f} ({sd:.4f}) | "
            f"{statistics.mean(b.values()):.4f} "
            f"({statistics.stdev(b.values()) if len(b) > 1 else float('nan'):.4f}) | "
            f"{statistics.mean(diffs):+.4f} | {worst:.4f} | {sd:.4f} | {worst / sd:.2f} |"
        )
    # What the report tests is a difference against the reference, paired by seed: how far does
    # bf16 move that difference, beside the seed-to-seed SD of the difference itself?
    print("\n| difference | fp32 mean (SD over seeds) | bf16 mean | shift bf16−fp32 | shift / SD |")
    print("|---|---|---|---|---|")
    shifted = []
    for p_label, ref_label, diffs in _paired_differences(studies):
        (a, sd), b = diffs["fp32"], diffs["bf16"][0]
        shifted.append(abs(b - a) > sd)
        print(
            f"| {p_label} − {ref_label} | {a:+.4f} ({sd:.4f}) | {b:+.4f} | {b - a:+.4f} | "
            f"{abs(b - a) / sd:.2f} |"
        )
    verdicts = {p: _verdicts(analyse(s)) for p, s in studies.items()}
    print("\n| comparison | fp32 verdict | bf16 verdict |")
    print("|---|---|---|")
    same = True
    for key in verdicts["fp32"]:
        v32, v16 = verdicts["fp32"][key], verdicts["bf16"].get(key, "(none)")
        same &= v32 == v16
        print(f"| {key} | {v32} | {v16}{'' if v32 == v16 else ' (changed)'} |")
    print(
        f"\nevery verdict the same: {'yes' if same else 'NO'}; conditions moved by more than "
        f"their seed SD: {sum(moved)} of {len(moved)}; differences against the reference moved "
        f"by more than their seed SD: {sum(shifted)} of {len(shifted)}"
    )
    return 0 if same and not any(moved) and not any(shifted) else 1


def _paired_differences(studies: dict):
    """``(condition, reference, {precision: (mean, SD) of condition − reference over seeds})``
    for each condition with a reference."""
    for cond in studies["fp32"].conditions:
        ref = studies["fp32"].reference_of(cond)
        if ref is None or ref.label == cond.label:
            continue
        out = {}
        for p, study in studies.items():
            c = next(x for x in study.conditions if x.label == cond.label)
            r = next(x for x in study.conditions if x.label == ref.label)
            a, b = study.losses(c), study.losses(r)
            d = [a[s] - b[s] for s in sorted(set(a) & set(b))]
            out[p] = (statistics.mean(d), statistics.stdev(d) if len(d) > 1 else float("nan"))
        yield cond.label, ref.label, out


if __name__ == "__main__":
    sys.exit(main())
