"""Automatic placement end to end: `loraplace place`, and automatic strategies in a study."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import yaml
from helpers import tiny_study

import loraplace
from loraplace.config.study import load_study_config
from loraplace.errors import ConfigError, StrategyError
from loraplace.placement.grammar import parse_strategy
from loraplace.studies.runner import run_study


def _place(model_dir, data_file, *extra) -> subprocess.CompletedProcess:
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "loraplace",
            "place",
            "--model",
            str(model_dir),
            "--dataset",
            str(data_file),
            "--train-examples",
            "24",
            "--eval-examples",
            "8",
            "--max-length",
            "96",
            "--rank",
            "4",
            "--probe-steps",
            "4",
            *map(str, extra),
        ],
        capture_output=True,
        text=True,
        env={**os.environ, "TQDM_DISABLE": "1"},
    )


@pytest.mark.parametrize("method", ["grad", "snr", "random"])
def test_place_prints_a_strategy_within_the_budget_that_round_trips(
    method, tiny_model_dir, tiny_data_file, tmp_path
):
    from loraplace.placement.planner import ModelPlanner

    proc = _place(
        tiny_model_dir, tiny_data_file, "--budget", "attn", "--method", method, "--out", tmp_path
    )
    assert proc.returncode == 0, proc.stderr
    strategy = proc.stdout.strip().splitlines()[-1]
    planner = ModelPlanner.for_model(str(tiny_model_dir))
    budget = planner.plan({"b": "attn"}, 4)[0].trainable_params
    plan = planner.plan({"auto": strategy}, 4)[0]
    assert 0.95 * budget <= plan.trainable_params <= budget
    placement = json.loads((tmp_path / "placement.json").read_text())
    assert (
        placement["strategy"] == strategy and placement["trainable_params"] == plan.trainable_params
    )
    rows = (tmp_path / "importance.csv").read_text().splitlines()
    assert rows[0] == "layer,role,module,score,chosen,rank"
    chosen = {r.split(",")[2] for r in rows[1:] if r.split(",")[4] == "1"}
    assert chosen == set(plan.targets)
    assert (tmp_path / "importance.png").stat().st_size > 1000
    # Same seed and data, same strategy.
    again = _place(tiny_model_dir, tiny_data_file, "--budget", "attn", "--method", method)
    assert again.stdout.strip().splitlines()[-1] == strategy


@pytest.mark.parametrize("method", ["grad", "random"])
def test_place_over_several_seeds_reports_how_far_they_agree(
    method, tiny_model_dir, tiny_data_file, tmp_path
):
    import itertools

    from scipy.stats import kendalltau

    from loraplace.placement.planner import ModelPlanner

    seeds = [0, 1, 2]
    proc = _place(
        tiny_model_dir,
        tiny_data_file,
        *("--budget", "attn", "--method", method, "--seeds", "0,1,2", "--out", tmp_path),
    )
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.strip().splitlines()
    strategies = lines[-3:]
    planner = ModelPlanner.for_model(str(tiny_model_dir))
    chosen, scores = {}, {}
    for seed, strategy in zip(seeds, strategies):
        placement = json.loads((tmp_path / f"seed{seed}" / "placement.json").read_text())
        assert placement["seed"] == seed and placement["strategy"] == strategy
        assert set(placement["chosen"]) == set(planner.plan({"s": strategy}, 4)[0].targets)
        chosen[seed] = set(placement["chosen"])
        rows = (tmp_path / f"seed{seed}" / "importance.csv").read_text().splitlines()[1:]
        scores[seed] = {r.split(",")[2]: r.split(",")[3] for r in rows}
    # Each seed's placement is the one a single `--seed` gives.
    single = _place(
        tiny_model_dir, tiny_data_file, "--budget", "attn", "--method", method, "--seed", "2"
    )
    assert single.stdout.strip().splitlines()[-1] == strategies[2]

    agreement = lines[-4]
    pairs = list(itertools.combinations(seeds, 2))
    jaccards = [len(chosen[a] & chosen[b]) / len(chosen[a] | chosen[b]) for a, b in pairs]
    assert f"{min(jaccards):.2f}" in agreement and "over 3 pairs of seeds" in agreement
    in_all, in_any = set.intersection(*chosen.values()), set.union(*chosen.values())
    assert f"; {len(in_all)} modules chosen by every seed, {len(in_any)} by some" in agreement
    if method == "random":
        assert "tau" not in agreement  # no scores to rank
    else:
        names = sorted(scores[0])
        taus = [
            kendalltau([float(scores[a][n]) for n in names], [float(scores[b][n]) for n in names])[
                0
            ]
            for a, b in pairs
        ]
        assert f"Kendall tau-b of the module scores {min(taus):.2f}" in agreement


@pytest.mark.parametrize("method", ["snr", "random"])
def test_place_without_a_probe_reads_no_data(method, tiny_model_dir, tiny_data_file, tmp_path):
    missing = tmp_path / "no-such-data.jsonl"
    proc = _place(tiny_model_dir, missing, "--budget", "attn", "--method", method)
    assert proc.returncode == 0, proc.stderr
    assert str(missing) not in proc.stdout
    same = _place(tiny_model_dir, tiny_data_file, "--budget", "attn", "--method", method)
    assert proc.stdout.strip().splitlines()[-1] == same.stdout.strip().splitlines()[-1]
    grad = _place(tiny_model_dir, missing, "--budget", "attn", "--method", "grad")
    assert grad.returncode == 2 and "no-such-data.jsonl" in grad.stderr


def test_an_unreachable_budget_is_one_line(tiny_model_dir, tiny_data_file):
    proc = _place(tiny_model_dir, tiny_data_file, "--budget", "5", "--method", "snr")
    assert proc.returncode == 2
    assert len(proc.stderr.strip().splitlines()) == 1 and "below the cheapest" in proc.stderr


def test_a_budget_with_nothing_to_choose_fails_before_loading_anything(tiny_model_dir, tmp_path):
    # `all` at the placing rank: every module fits, so there is no placement to choose; the
    # error comes before the probe's data (which does not exist here) is read.
    missing = tmp_path / "no-such-data.jsonl"
    proc = _place(tiny_model_dir, missing, "--budget", "all", "--method", "grad")
    assert proc.returncode == 2
    assert "leaves nothing to choose" in proc.stderr and "loading" not in proc.stdout


def test_the_probe_never_reads_the_eval_or_validation_split(tiny_model_dir, tiny_data_file):
    from loraplace.autoplace.probe import auto_place
    from loraplace.settings import AutoSpec, DataConfig
    from loraplace.training.workbench import Workbench

    bench = Workbench.load(
        str(tiny_model_dir),
        DataConfig(
            dataset=str(tiny_data_file),
            train_examples=24,
            validation_examples=8,
            eval_examples=8,
            max_length=96,
        ),
    )

    class Forbidden:
        def __getattr__(self, name):
            raise AssertionError(f"the probe read a held-out split ({name})")

    bench.eval, bench.validation = Forbidden(), Forbidden()
    result = auto_place(bench, AutoSpec(method="grad", probe_steps=3), rank=4, budget=1500, seed=0)
    assert result.cost.steps == 3 and result.cost.tokens > 0


def _auto_study(model_dir, data_file, **auto) -> dict:
    raw = tiny_study(model_dir, data_file)
    raw["eval"] = {"accuracy_examples": 0}
    raw["training"] = {**raw["training"], "seeds": [0, 1]}
    raw["strategies"] = {
        "attention-only": "attn",
        "auto-grad": {
            "auto": {"method": "grad", "budget": "attention-only", "probe_steps": 3, **auto}
        },
        "random": {"auto": {"method": "random", "budget": "attention-only"}},
    }
    raw["reference"] = "attention-only"
    return raw


def test_a_study_resolves_automatic_strategies_once_and_records_them(
    tiny_model_dir, tiny_data_file, tmp_path, monkeypatch
):
    import loraplace.autoplace.probe as probe

    raw = _auto_study(tiny_model_dir, tiny_data_file)
    out = tmp_path / "out"
    assert run_study(load_study_config(raw), out, show_progress=False) == 0
    resolved = {p.stem: json.loads(p.read_text()) for p in (out / "auto").glob("*.json")}
    assert sorted(resolved) == ["auto-grad--seed0", "random--seed0"]
    budget = load_study_config(raw).plans[("attention-only", None)].trainable_params
    for name, record in (
        ("auto-grad", resolved["auto-grad--seed0"]),
        ("random", resolved["random--seed0"]),
    ):
        assert 0.95 * budget <= record["trainable_params"] <= budget
        for seed in (0, 1):
            result = json.loads((out / "runs" / f"{name}--seed{seed}" / "result.json").read_text())
            # Every seed's run uses the one resolved placement; the probe's cost is recorded.
            assert result["spec"] == str(parse_strategy(record["strategy"]))
            assert result["auto"]["strategy"] == record["strategy"]
            assert result["auto"]["probe"] == record["probe"]
    assert resolved["auto-grad--seed0"]["probe"]["steps"] == 3
    assert (out / "auto" / "auto-grad--seed0" / "importance.png").is_file()

    # Resume never probes again.
    def no_probe(*args, **kwargs):
        raise AssertionError("probed again on resume")

    monkeypatch.setattr(probe, "auto_place", no_probe)
    raw["training"] = {**raw["training"], "seeds": [0, 1, 2]}
    assert loraplace.study(load_study_config(raw), out=out, show_progress=False) == 0
    report = (out / "report" / "report.md").read_text()
    assert "auto grad" in report


def test_a_study_checks_every_budget_before_the_first_probe(
    tiny_model_dir, tiny_data_file, tmp_path, monkeypatch
):
    # auto-grad's budget is fine and comes first; random's leaves nothing to choose. The study
    # must fail on random's before it spends a probe on auto-grad.
    import loraplace.autoplace.probe as probe

    def no_probe(*args, **kwargs):
        raise AssertionError("probed before every budget was checked")

    monkeypatch.setattr(probe, "auto_place", no_probe)
    raw = _auto_study(tiny_model_dir, tiny_data_file)
    raw["strategies"]["random"] = {"auto": {"method": "random", "budget": "all"}}
    with pytest.raises(StrategyError, match="leaves nothing to choose"):
        run_study(load_study_config(raw), tmp_path / "out", show_progress=False)
    assert not list((tmp_path / "out").glob("auto/*.json"))


def test_probe_per_seed_resolves_a_placement_for_each_seed(
    tiny_model_dir, tiny_data_file, tmp_path
):
    raw = _auto_study(tiny_model_dir, tiny_data_file, probe_per_seed=True)
    raw["strategies"].pop("random")
    out = tmp_path / "out"
    assert run_study(load_study_config(raw), out, show_progress=False) == 0
    assert sorted(p.stem for p in (out / "auto").glob("*.json")) == [
        "auto-grad--seed0",
        "auto-grad--seed1",
    ]
    for seed in (0, 1):
        record = json.loads((out / "auto" / f"auto-grad--seed{seed}.json").read_text())
        result = json.loads((out / "runs" / f"auto-grad--seed{seed}" / "result.json").read_text())
        assert record["seed"] == seed and result["auto"]["strategy"] == record["strategy"]


def test_the_estimate_of_a_started_study_uses_the_placements_it_resolved(
    tiny_model_dir, tiny_data_file, tmp_path, capsys, monkeypatch
):
    # `study --estimate` runs and probes nothing, but a started study has its placements
    # recorded: each seed's is compiled for pricing, not priced as all-layer LoRA.
    import loraplace.autoplace.probe as probe
    from loraplace.store import RunKey
    from loraplace.studies.estimate import estimate_only

    raw = _auto_study(tiny_model_dir, tiny_data_file, probe_per_seed=True)
    raw["strategies"].pop("random")
    out = tmp_path / "out"
    assert run_study(load_study_config(raw), out, show_progress=False) == 0
    (out / "runs" / "auto-grad--seed1" / "result.json").unlink()
    capsys.readouterr()

    def no_probe(*args, **kwargs):
        raise AssertionError("the estimate probed")

    monkeypatch.setattr(probe, "auto_place", no_probe)
    config = load_study_config(raw)
    assert estimate_only(config, out) == 0
    printed = capsys.readouterr().out
    assert "estimate: 1 runs to go" in printed and "not resolved yet" not in printed
    for seed in (0, 1):
        record = json.loads((out / "auto" / f"auto-grad--seed{seed}.json").read_text())
        assert config.plan_for(RunKey("auto-grad", seed, None)).spec == record["strategy"]

    # A new directory has nothing recorded: its automatic runs are priced as all-layer ones.
    assert estimate_only(load_study_config(raw), tmp_path / "new") == 0
    assert "2 runs of automatic strategies are priced as all-layer runs" in (
        capsys.readouterr().out
    )


def test_a_kill_during_the_probe_is_resumed(tiny_model_dir, tiny_data_file, tmp_path):
    raw = _auto_study(tiny_model_dir, tiny_data_file, probe_steps=200)
    raw["strategies"].pop("random")
    raw["training"] = {**raw["training"], "seeds": [0]}
    config_file = tmp_path / "study.yaml"
    config_file.write_text(yaml.safe_dump(raw))
    out = tmp_path / "out"
    env = {**os.environ, "TQDM_DISABLE": "1"}
    command = [
        sys.executable,
        "-m",
        "loraplace",
        "study",
        str(config_file),
        "--out",
        str(out),
        "--no-report",
    ]
    proc = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env
    )
    deadline = time.time() + 300
    for line in proc.stdout:  # kill as soon as the probe has started
        if line.startswith("placing auto-grad"):
            break
        assert time.time() < deadline
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not list((out / "auto").glob("*.json"))
    finished = subprocess.run(command, capture_output=True, text=True, env=env)
    assert finished.returncode == 0, finished.stderr
    assert (
        json.loads((out / "runs" / "auto-grad--seed0" / "result.json").read_text())["status"]
        == "finished"
    )


@pytest.mark.parametrize(
    "entry, words",
    [
        ({"auto": {"method": "magic", "budget": 100}}, ["auto.method", "magic"]),
        ({"auto": {"budget": "nonsense@"}}, ["budget is not a strategy"]),
        ({"auto": {"method": "grad", "bduget": 1}}, ["unknown key", "bduget"]),
        ({"manual": "all"}, ["{auto: {method"]),
    ],
)
def test_bad_automatic_strategies_are_refused(entry, words, tiny_model_dir, tiny_data_file):
    raw = tiny_study(tiny_model_dir, tiny_data_file)
    raw["strategies"] = {"attention-only": "attn", "x": entry}
    raw["reference"] = "attention-only"
    with pytest.raises(ConfigError) as info:
        load_study_config(raw)
    assert all(w in str(info.value) for w in words), str(info.value)
