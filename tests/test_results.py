"""The committed results regenerate: `loraplace report` on each raw study directory under
docs/results/ writes the committed summary.csv again, cell for cell."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest

from loraplace.report.build import write_report
from loraplace.studies.export import export_study

ROOT = Path(__file__).resolve().parents[1]
STUDIES = sorted(p.parent for p in (ROOT / "docs" / "results").glob("*/study.yaml"))


def test_the_committed_studies_are_all_found():
    # The regeneration test below is parametrized by a glob: an empty glob would skip it.
    assert {p.name for p in STUDIES} >= {"auto-placement", "budget-curves", "default", "pilot"}


@pytest.fixture(scope="module")
def regenerate(tmp_path_factory):
    """The report of a committed study, written again from a copy of its raw files (once per
    study and test module)."""
    done: dict[str, Path] = {}

    def report_dir(study: Path) -> Path:
        if study.name not in done:
            copy = tmp_path_factory.mktemp("regenerated") / study.name
            export_study(study, copy)
            shutil.rmtree(copy / "report", ignore_errors=True)
            done[study.name] = write_report(copy)
        return done[study.name]

    return report_dir


@pytest.mark.parametrize("study", STUDIES, ids=[p.name for p in STUDIES])
def test_the_committed_summary_regenerates_from_the_raw_files(study, regenerate):
    committed = (study / "report" / "summary.csv").read_text()
    assert (regenerate(study) / "summary.csv").read_text() == committed


def test_export_copies_records_not_weights_and_the_report_regenerates(tmp_path):
    import json

    from loraplace import store

    src = tmp_path / "src"
    key = store.RunKey("a", 0)
    store.write_result(
        key.run_dir(src),
        {
            "name": "a",
            "seed": 0,
            "status": "finished",
            "eval_loss": 1.0,
            "spec": "all",
            "trainable_params": 10,
        },
    )
    (key.run_dir(src) / "adapter").mkdir()
    (key.run_dir(src) / "adapter" / "adapter_model.safetensors").write_bytes(b"x" * 100)
    (src / "study.yaml").write_text("name: s\nstrategies: {a: all}\n")
    (src / ".lock").write_text("{}")
    running = store.RunKey("a", 1).run_dir(src)
    running.mkdir(parents=True)
    (running / "metrics.jsonl").write_text('{"step": 1, "loss": 2.0}\n')
    count = export_study(src, tmp_path / "dst")
    assert count == 2
    assert (
        json.loads((tmp_path / "dst" / "runs" / "a--seed0" / "result.json").read_text())[
            "eval_loss"
        ]
        == 1.0
    )
    assert not (tmp_path / "dst" / "runs" / "a--seed0" / "adapter").exists()
    assert not (tmp_path / "dst" / ".lock").exists()
    assert not (tmp_path / "dst" / "runs" / "a--seed1").exists()  # in progress: not a record


def _finished(study: Path, seed: int) -> None:
    from loraplace import store

    record = {"name": "a", "seed": seed, "status": "finished", "eval_loss": 1.0, "spec": "all"}
    store.write_result(store.RunKey("a", seed).run_dir(study), record)


def test_export_brings_an_earlier_export_of_the_same_study_up_to_date(tmp_path):
    # A study that grew a seed and gained a report key in place is the study exported before:
    # the export is updated. Another config, or other model files or data, is refused.
    from loraplace.errors import LoraplaceError

    src, dst = tmp_path / "src", tmp_path / "dst"
    _finished(src, 0)
    (src / "study.yaml").write_text("name: s\nstrategies: {a: all}\ntraining: {seeds: [0]}\n")
    (src / "identity.json").write_text('{"model": "m", "data": "d"}')
    export_study(src, dst)
    _finished(src, 1)
    grown = "name: s\nstrategies: {a: all}\ntraining: {seeds: [0, 1]}\nreport: {lowest: false}\n"
    (src / "study.yaml").write_text(grown)
    export_study(src, dst)
    assert (dst / "study.yaml").read_text() == grown
    assert (dst / "runs" / "a--seed1" / "result.json").is_file()

    other = tmp_path / "other"
    _finished(other, 0)
    (other / "study.yaml").write_text("name: s\nstrategies: {a: attn}\ntraining: {seeds: [0]}\n")
    with pytest.raises(LoraplaceError, match="holds another study"):
        export_study(other, dst)
    (src / "identity.json").write_text('{"model": "m2", "data": "d"}')
    with pytest.raises(LoraplaceError, match="holds another study"):
        export_study(src, dst)
    assert (dst / "study.yaml").read_text() == grown  # a refused export changes nothing


def test_export_with_states_carries_a_run_in_progress_until_it_is_complete(tmp_path):
    # A run in progress that saved its training state travels with --states and is kept when
    # copied back; once the run is complete, or without --states, the export drops the state.
    from loraplace import store

    src, dst = tmp_path / "src", tmp_path / "dst"
    _finished(src, 0)
    (src / "study.yaml").write_text("name: s\nstrategies: {a: all}\n")
    running = store.RunKey("a", 1).run_dir(src)
    running.mkdir(parents=True)
    (running / "metrics.jsonl").write_text('{"step": 1, "loss": 2.0}\n')
    (running / store.RESUME_FILE).write_bytes(b"state")
    (running / "adapter").mkdir()
    (running / "adapter" / "adapter_model.safetensors").write_bytes(b"x")
    moved = store.RunKey("a", 1).run_dir(dst)

    assert export_study(src, dst) == 2  # study.yaml and the finished run's record
    assert not moved.exists()
    assert export_study(src, dst, states=True) == 4
    assert (moved / store.RESUME_FILE).read_bytes() == b"state"
    assert (moved / "metrics.jsonl").is_file() and not (moved / "adapter").exists()
    assert store.can_resume(moved)  # a study copied back from here goes on from the state

    export_study(src, dst)  # without --states the carried state goes with its run's files
    assert not moved.exists()
    export_study(src, dst, states=True)
    _finished(src, 1)  # the run completes: its state is gone from the source
    export_study(src, dst, states=True)
    assert (moved / store.RESULT_FILE).is_file()
    assert not (moved / store.RESUME_FILE).exists()


def _table_lines(lines: list[str], start: int) -> list[str]:
    """The lines of a markdown table from ``lines[start]`` on, stripped, up to its end."""
    table = []
    for row in lines[start:]:
        if not row.startswith("|"):
            break
        table.append(row.strip())
    return table


def _results_tables(text: str, title: str) -> dict[str, list[list[str]]]:
    """Every markdown table in ``text`` whose first header cell starts with ``title``: its
    header's first cell -> rows of cells."""
    tables, lines = {}, text.splitlines()
    for i, line in enumerate(lines):
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if line.startswith("|") and cells[0].startswith(title):
            rows = [
                [c.strip() for c in row.strip("|").split("|")] for row in _table_lines(lines, i + 2)
            ]
            tables[cells[0]] = [cells, *rows]
    return tables


def test_the_validation_losses_in_results_are_the_selection_runs():
    # docs/RESULTS.md quotes the budget-curve study's selection table, one table per learning
    # rate; each cell must be the validation loss of that selection run, not another column.
    import json

    study = ROOT / "docs" / "results" / "budget-curves"
    names = {"all-linear": "all-linear", "FFN-only": "ffn-only", "last-half": "last-half"}
    names["attention-only"] = "attention-only"
    tables = _results_tables((ROOT / "docs" / "RESULTS.md").read_text(), "learning rate ")
    assert tables, "RESULTS.md quotes no validation-loss table"
    checked = 0
    for title, (header, *rows) in tables.items():
        lr = float(title.removeprefix("learning rate "))
        for row in rows:
            for rank, cell in zip(header[1:], row[1:]):
                run = f"{names[row[0]]}--{rank}--lr{lr:.0e}--seed0"
                record = json.loads((study / "selection" / run / "result.json").read_text())
                assert cell.split()[0] == f"{record['validation_loss']:.4f}", (title, row[0], rank)
                checked += 1
    assert checked == 24  # the tables of 3e-3 (chosen) and 1e-2


_QUOTE = re.compile(r"<!-- table from results/([\w.-]+)/report/report.md -->")
_ATLAS_QUOTE = "<!-- table from results/atlas/atlas.md -->"
ATLAS = ROOT / "docs" / "results" / "atlas"


def test_the_committed_atlas_regenerates_from_the_committed_cells(tmp_path, monkeypatch):
    # docs/results/atlas/atlas.md is `loraplace report CELL ... --atlas docs/results/atlas`
    # run from the repository root on the studies its last line names.
    from loraplace.report.atlas import write_atlas

    committed = (ATLAS / "atlas.md").read_text()
    studies = next(line for line in committed.splitlines() if line.startswith("Studies: "))
    cells = re.findall(r"`([^`]+)`", studies)
    assert cells and all((ROOT / cell / "study.yaml").is_file() for cell in cells)
    monkeypatch.chdir(ROOT)
    assert (write_atlas(cells, tmp_path) / "atlas.md").read_text() == committed


def test_the_atlas_tables_results_quotes_are_rows_of_the_committed_atlas():
    lines = (ROOT / "docs" / "RESULTS.md").read_text().splitlines()
    starts = [i for i, line in enumerate(lines) if line.strip() == _ATLAS_QUOTE]
    assert starts, "RESULTS.md quotes no atlas table"
    atlas = [line.strip() for line in (ATLAS / "atlas.md").read_text().splitlines()]
    for start in starts:
        header, rule, *rows = _table_lines(lines, start + 1)
        assert header in atlas and atlas[atlas.index(header) + 1] == rule, header
        table = _table_lines(atlas, atlas.index(header) + 2)
        assert rows and all(row in table for row in rows), rows


def _quoted_tables(text: str) -> list[tuple[str, list[str]]]:
    """``(study, table lines)`` for each table in ``text`` marked as quoted from a study's
    report by a ``<!-- table from results/NAME/report/report.md -->`` line just above it."""
    quoted, lines = [], text.splitlines()
    for i, line in enumerate(lines):
        match = _QUOTE.fullmatch(line.strip())
        if match:
            quoted.append((match.group(1), _table_lines(lines, i + 1)))
    return quoted


def test_the_tables_results_quotes_are_rows_of_the_regenerated_reports(regenerate):
    # A table in docs/RESULTS.md marked as quoted from a report must be that report's table,
    # regenerated now from the committed raw files: the same header and every row one of its
    # rows (a quote may leave rows out, never change one).
    quoted = _quoted_tables((ROOT / "docs" / "RESULTS.md").read_text())
    assert any(study == "budget-curves" for study, _ in quoted), "no table quoted from the study"
    for study, (header, rule, *rows) in quoted:
        report = (regenerate(ROOT / "docs" / "results" / study) / "report.md").read_text()
        lines = [line.strip() for line in report.splitlines()]
        starts = [i for i, line in enumerate(lines) if line == header]
        assert starts, (study, header)
        table = []
        for start in starts:
            assert lines[start + 1] == rule, (study, header)
            table += _table_lines(lines, start + 2)
        assert rows, (study, header)
        for row in rows:
            assert row in table, (study, row)


def test_the_probe_seed_figures_in_results_are_those_of_the_committed_placements():
    # docs/RESULTS.md quotes how much the grad probe's seed moves the placement; the figures
    # are computed again from the committed importance.csv files.
    from loraplace.report.load import placement_spread, read_importance
    from loraplace.stats.measures import jaccard

    def chosen(path: Path) -> set:
        return read_importance(path)[1]

    place = ROOT / "docs" / "results" / "placement"
    files = {s: place / "probe-seeds" / f"seed{s}" / "importance.csv" for s in (0, 1, 2)}
    spread = placement_spread(
        {s: chosen(f) for s, f in files.items()},
        {s: read_importance(f)[0] for s, f in files.items()},
    )
    text = " ".join((ROOT / "docs" / "RESULTS.md").read_text().split())
    assert f"τ-b {min(spread.tau):.2f} to {max(spread.tau):.2f}" in text
    assert f"Jaccard index {min(spread.jaccard):.2f} to {max(spread.jaccard):.2f}" in text
    assert f"{spread.in_all} modules are chosen by all three seeds, {spread.in_any} by" in text
    study = {  # the study's placement against each standalone one
        m: jaccard(chosen(files[0]), chosen(place / m / "importance.csv"))
        for m in ("random", "snr", "grad")
    }
    assert (
        f"`random` placement with Jaccard {study['random']:.2f}, `snr`'s with "
        f"{study['snr']:.2f}, and the standalone run's (other data) with {study['grad']:.2f}"
    ) in text


def _where_the_budget_went(study: Path):
    """The study's config, and a function that counts one placement's cells of the tables in
    docs/RESULTS.md: modules, layers used, FFN modules and the FFN share of its parameters."""
    from loraplace.autoplace.choose import units_of
    from loraplace.config.study import load_study_config
    from loraplace.placement.planner import ModelPlanner

    config = load_study_config(study / "study.yaml")
    planner = ModelPlanner.for_model(config.model)
    units = {u.module: u for u in units_of(planner.arch)}

    def hand(name: str):
        (plan,) = planner.plan({name: config.strategies[name]}, config.lora.rank)
        return plan

    def cells(modules, rank: int) -> str:
        picked = [units[m] for m in modules]
        ffn = [u for u in picked if set(u.roles) & {"gate", "up", "down"}]
        share = sum(u.cost(rank) for u in ffn) / sum(u.cost(rank) for u in picked)
        layers = sorted({u.layer for u in picked})
        if len(layers) == planner.arch.num_layers:
            used = f"all {len(layers)}"
        elif layers[-1] - layers[0] + 1 == len(layers):
            used = f"{len(layers)} ({layers[0]}–{layers[-1]})"
        else:
            used = f"{len(layers)} in {layers[0]}–{layers[-1]}"
        return f"{len(picked)} | {used} | {len(ffn)} | {share:.0%}"

    return config, hand, cells


def test_where_the_budget_went_in_results_is_counted_from_the_committed_placements():
    # docs/RESULTS.md tabulates each placement of the study at attention-only r8 by modules,
    # layers used, FFN modules and FFN share of its parameters; recount them from the chosen
    # modules in the committed auto/*.json and from attention-only's plan, at the study's rank.
    import csv
    import json
    import statistics

    study = ROOT / "docs" / "results" / "auto-placement"
    config, hand, cells = _where_the_budget_went(study)
    chosen = {
        f"`{name}`": json.loads((study / "auto" / f"{name}--seed0.json").read_text())["chosen"]
        for name in ("random", "auto-grad", "auto-snr")
    }
    chosen["attention-only"] = hand("attention-only").module_ranks
    with open(study / "results.csv") as f:
        finals = [r for r in csv.DictReader(f) if r["stage"] != "selection"]
    text = (ROOT / "docs" / "RESULTS.md").read_text()
    for label, modules in chosen.items():
        name = label.strip("`")
        loss = statistics.mean(float(r["eval_loss"]) for r in finals if r["name"] == name)
        row = f"| {label} | {cells(modules, config.lora.rank)} | {loss:.4f} |"
        assert row in text, row


def test_where_the_budget_goes_at_all_linear_r2_is_counted_from_the_committed_placements():
    # The same count for every placement the study at all-linear r2 resolved (one per probe
    # seed where it probes per seed), each at the rank it places at, and for all-linear r2,
    # beside the eval loss of the final run that trained it (the mean over the seeds where one
    # placement served all three).
    import csv
    import json
    import statistics
    from collections import Counter

    study = ROOT / "docs" / "results" / "auto-placement-r2"
    _, hand, cells = _where_the_budget_went(study)
    records = [json.loads(f.read_text()) for f in sorted((study / "auto").glob("*.json"))]
    assert {r["name"] for r in records} == {"auto-grad-r2", "auto-snr-r2", "random-r2"}
    with open(study / "results.csv") as f:
        finals = [r for r in csv.DictReader(f) if r["stage"] != "selection"]

    def loss(name: str, seed: int | None) -> float:
        losses = [
            float(r["eval_loss"])
            for r in finals
            if r["name"] == name and (seed is None or int(r["seed"]) == seed)
        ]
        assert len(losses) == (3 if seed is None else 1)
        return statistics.mean(losses)

    per_name = Counter(r["name"] for r in records)  # one placement for every seed: "all"
    rows = []
    for r in records:
        seed = r["seed"] if per_name[r["name"]] > 1 else None
        rows.append(
            f"| `{r['name']}` | {'all' if seed is None else seed} | {r['rank']} | "
            f"{cells(r['chosen'], r['rank'])} | {r['trainable_params']:,} | "
            f"{loss(r['name'], seed):.4f} |"
        )
    plan = hand("all-r2")
    (rank,) = set(plan.module_ranks.values())
    row = f"| {cells(plan.module_ranks, rank)} | {plan.trainable_params:,} |"
    rows.append(f"| `all-r2` | all | {rank} {row} {loss('all-r2', None):.4f} |")
    text = (ROOT / "docs" / "RESULTS.md").read_text()
    for row in rows:
        assert row in text, row
