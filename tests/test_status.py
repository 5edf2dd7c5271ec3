"""`loraplace status`: where a study stands, from its files alone."""

from __future__ import annotations

import json
import os
import shutil
from types import SimpleNamespace

import pytest
from helpers import tiny_study

from loraplace import store
from loraplace.config.study import load_study_config
from loraplace.config.yamlio import dump_yaml
from loraplace.studies.lock import StudyLock, lock_holder
from loraplace.studies.runner import run_study
from loraplace.studies.status import format_duration, parallelism, study_status, time_left


def _result(started: str, finished: str) -> dict:
    return {"status": "finished", "started_at": started, "finished_at": finished}


def test_time_left_times_each_run_by_its_own_condition_and_stage():
    a0, a1, a2 = store.RunKey("a", 0), store.RunKey("a", 1), store.RunKey("a", 2)
    b0, b1 = store.RunKey("b", 0), store.RunKey("b", 1)
    states = [
        (a0, "finished", _result("2026-01-01T00:00:00+00:00", "2026-01-01T00:01:40+00:00")),
        (b0, "finished", _result("2026-01-01T00:00:00+00:00", "2026-01-01T00:00:10+00:00")),
        (a1, "pending", None),
        (a2, "pending", None),
        (b1, "in progress", None),
    ]
    spent, left, unknown = time_left(states)
    assert (spent, left, unknown) == (110.0, 210.0, 0)  # 100 + 100 + 10, not 3 x 55
    # A condition with no finished run is timed by its stage's mean; a run of a stage with
    # none, by its condition's runs in the other stage; with neither, it is unknown.
    c1, s0 = store.RunKey("c", 1), store.RunKey("a", 0, learning_rate=1e-3, stage="selection")
    d0 = store.RunKey("d", 0, learning_rate=1e-3, stage="selection")
    more = [(c1, "pending", None), (s0, "pending", None), (d0, "pending", None)]
    spent, left, unknown = time_left([*states, *more])
    assert (left, unknown) == (210.0 + 55.0 + 100.0, 1)


def test_time_left_prices_an_adopted_final_run_as_an_evaluation_and_a_resumed_one_by_its_steps(
    tmp_path,
):
    config = load_study_config(
        {
            "strategies": {"a": "attn", "b": "mlp"},
            "data": {"validation_examples": 4},
            "training": {"steps": 10, "learning_rates": [1e-3, 3e-3], "seeds": [0, 1, 2]},
            "eval": {"checkpoints": [0.5, 1.0]},
        },
        check_model=False,
    )
    sel = store.RunKey("a", 0, learning_rate=1e-3, stage="selection")
    a1, a2, a0 = store.RunKey("a", 1), store.RunKey("a", 2), store.RunKey("a", 0)
    b0 = store.RunKey("b", 0)
    trained = {**_result("2026-01-01T00:00:00+00:00", "2026-01-01T00:01:40+00:00")}
    states = [
        (sel, "finished", _result("2026-01-01T00:00:00+00:00", "2026-01-01T00:01:20+00:00")),
        (a1, "finished", {**trained, "eval_time_s": 6.0}),
        (a2, "in progress", None),
        (a0, "pending", None),  # seed 0 is the selection seed: these two only evaluate
        (b0, "pending", None),
    ]
    # Without the config every run is a training run of its condition and stage.
    assert time_left(states)[1:] == (300.0, 0)
    # Adopted: the trained final run's evaluation of the last checkpoint, times 2 checkpoints;
    # a2 has no saved training state: it starts over.
    (a2.run_dir(tmp_path)).mkdir(parents=True)
    (a2.run_dir(tmp_path) / "metrics.jsonl").write_text(
        "".join(json.dumps({"step": s, "loss": 1.0}) + "\n" for s in (1, 2, 3, 4))
    )
    assert time_left(states, config, tmp_path)[1:] == (100.0 + 2 * 12.0, 0)
    # With a saved state it goes on from step 4 of 10: 60% of a run.
    (a2.run_dir(tmp_path) / store.RESUME_FILE).write_bytes(b"state")
    assert time_left(states, config, tmp_path)[1] == pytest.approx(60.0 + 2 * 12.0)
    # Once an adopted run is complete, the others are timed by it, and it does not dilute the
    # trained runs' times.
    b0_adopted = {**_result("2026-01-01T00:00:00+00:00", "2026-01-01T00:00:30+00:00")}
    b0_adopted["adopted_from"] = "selection/b--lr1e-03--seed0"
    done = [*states[:4], (b0, "finished", b0_adopted), (store.RunKey("b", 1), "pending", None)]
    spent, left, unknown = time_left(done, config, tmp_path)
    assert (spent, unknown) == (80.0 + 100.0 + 30.0, 0)
    assert left == pytest.approx(60.0 + 30.0 + 100.0)  # b seed 1 by the stage's trained run


def test_an_adopted_final_run_whose_weights_are_gone_is_priced_as_training(tmp_path):
    # A study restored from `loraplace export` has its selection runs without checkpoints: the
    # final run of the selection seed cannot be adopted, and will be trained.
    config = load_study_config(
        {
            "strategies": {"a": "attn"},
            "data": {"validation_examples": 4},
            "training": {"steps": 10, "learning_rates": [1e-3, 3e-3], "seeds": [0, 1]},
            "eval": {"checkpoints": [0.5, 1.0]},
        },
        check_model=False,
    )
    sels = [store.RunKey("a", 0, learning_rate=lr, stage="selection") for lr in (1e-3, 3e-3)]
    a0, a1 = store.RunKey("a", 0), store.RunKey("a", 1)
    selected = _result("2026-01-01T00:00:00+00:00", "2026-01-01T00:01:20+00:00")
    trained = {**_result("2026-01-01T00:00:00+00:00", "2026-01-01T00:01:40+00:00")}
    states = [*((k, "finished", selected) for k in sels), (a1, "finished", trained)]
    states.append((a0, "pending", None))
    # Selection not complete: its runs will keep their weights, so seed 0 is adopted.
    store.write_result(sels[0].run_dir(tmp_path), selected)
    assert config.adopts(a0, tmp_path) and config.adopts(a0)
    # Complete, with checkpoints: adopted (evaluation only, no evaluation timed yet).
    store.write_result(sels[1].run_dir(tmp_path), selected)
    (sels[1].run_dir(tmp_path) / "checkpoints").mkdir()
    assert config.adopts(a0, tmp_path)
    assert time_left(states, config, tmp_path)[1:] == (0.0, 1)
    # Complete, without any checkpoints: trained, like seed 1's final run.
    (sels[1].run_dir(tmp_path) / "checkpoints").rmdir()
    assert not config.adopts(a0, tmp_path) and config.adopts(a0)
    assert time_left(states, config, tmp_path)[1:] == (100.0, 0)
    assert not config.adopts(a1, tmp_path) and not config.adopts(sels[0], tmp_path)


def test_parallelism_is_run_time_over_busy_time():
    def runs(*spans):
        return [
            _result(
                f"2026-01-01T00:{a // 60:02d}:{a % 60:02d}+00:00",
                f"2026-01-01T00:{b // 60:02d}:{b % 60:02d}+00:00",
            )
            for a, b in spans
        ]

    assert parallelism(runs((0, 100), (0, 100))) == 2.0
    assert parallelism(runs((0, 100), (100, 200))) == 1.0
    # Two sessions of two runs at a time, with a gap between them that counts in neither.
    assert parallelism(runs((0, 100), (10, 110), (1000, 1200), (1000, 1200))) == pytest.approx(
        (200 + 400) / (110 + 200)
    )
    assert parallelism(runs((0, 100), (20, 60))) == pytest.approx(140 / 100)
    assert parallelism([]) == parallelism([None, {"status": "failed"}]) == 1.0


def test_format_duration():
    assert [format_duration(s) for s in (45, 750, 3900, None)] == [
        "45 s",
        "12 min 30 s",
        "1 h 05 min",
        "unknown",
    ]


def test_status_of_a_half_finished_study_reads_only_files(tiny_model_dir, tiny_data_file, tmp_path):
    raw = tiny_study(tiny_model_dir, tiny_data_file)
    raw["eval"] = {"accuracy_examples": 0}
    out = tmp_path / "study"
    assert run_study(load_study_config(raw), out, show_progress=False) == 0
    # One run interrupted (its directory without a result), one never started.
    (out / "runs" / "top--seed1" / "result.json").unlink()
    shutil.rmtree(out / "runs" / "attention-only--seed1")
    text = study_status(out)
    final = next(line for line in text.splitlines() if line.startswith("final"))
    assert final.split() == ["final", "4", "0", "1", "1"]
    assert "estimated time to finish:" in text and "unknown" not in text
    assert "runs at a time" not in text  # one run at a time: nothing to divide by
    # The interrupted run, by its curve; with a saved training state it would go on.
    assert "in progress: top seed 1: step 3 logged; no saved training state: starts over" in text
    (out / "runs" / "top--seed1" / store.RESUME_FILE).write_bytes(b"state")
    assert "top seed 1: step 3 logged; goes on from its saved training state" in study_status(out)
    assert "study process: not running" in study_status(out)
    # While a study process holds the directory the run may be under way, not interrupted.
    with StudyLock(out):
        assert lock_holder(out)["pid"] == os.getpid()
        text = study_status(out)
        assert f"study process: running: pid {os.getpid()}" in text
        assert "top seed 1: step 3 logged; training state saved" in text
        (out / "runs" / "top--seed1" / store.RESUME_FILE).unlink()
        assert "top seed 1: step 3 logged; no training state saved yet" in study_status(out)
    assert lock_holder(out) is None  # released: nobody holds it

    # The same four runs, made two at a time, 100 s each: the 2 left take 100 s, not 200 s.
    for i, path in enumerate(sorted((out / "runs").glob("*/result.json"))):
        record = json.loads(path.read_text())
        start = 200 * (i // 2)
        record["started_at"] = f"2026-01-01T00:{start // 60:02d}:{start % 60:02d}+00:00"
        end = start + 100
        record["finished_at"] = f"2026-01-01T00:{end // 60:02d}:{end % 60:02d}+00:00"
        path.write_text(json.dumps(record))
    text = study_status(out)
    assert "runs at a time: 2.0 on average" in text
    assert "estimated time to finish: 1 min 40 s" in text


def test_status_before_any_run_finished_says_the_time_is_not_known(
    tiny_model_dir, tiny_data_file, tmp_path
):
    raw = tiny_study(tiny_model_dir, tiny_data_file)
    out = tmp_path / "study"
    out.mkdir()
    (out / "study.yaml").write_text(dump_yaml(load_study_config(raw).to_dict()))
    text = study_status(out)
    final = next(line for line in text.splitlines() if line.startswith("final"))
    assert final.split() == ["final", "0", "0", "0", "6"]
    assert "not known until a run of each stage finishes (6 run(s) to time)" in text


def test_the_study_estimate_divides_by_the_runs_at_a_time_it_measured(
    tiny_model_dir, tiny_data_file, tmp_path, monkeypatch, capsys
):
    import loraplace.studies.estimate as estimate
    from loraplace.studies.estimate import print_estimate

    monkeypatch.setattr(estimate, "machine_matmul_rate", lambda: 100.0)
    config = load_study_config(tiny_study(tiny_model_dir, tiny_data_file))
    bench = _StubBench()
    out = tmp_path / "study"
    keys = config.run_keys()
    done, todo = keys[:2], keys[2:]

    def finish(starts: list[int]) -> str:
        for key, start in zip(done, starts):
            store.write_result(
                key.run_dir(out),
                {
                    "name": key.name,
                    "seed": key.seed,
                    "rank": key.rank,
                    "status": "finished",
                    "tokens_per_s": 50.0,
                    "started_at": f"2026-01-01T00:0{start}:00+00:00",
                    "finished_at": f"2026-01-01T00:0{start + 1}:00+00:00",
                },
            )
        capsys.readouterr()
        print_estimate(config, out, todo, bench)
        return capsys.readouterr().out

    one = finish([0, 1])  # one after the other
    two = finish([0, 0])  # side by side, at the same per-run rate
    assert "one run at a time" in one and "runs at a time" not in one
    assert "at the 2.0 runs at a time they ran" in two
    run_time = one.split("about ")[1].split(" one run")[0]
    assert f"({run_time} of run time)" in two  # the same summed time, halved for the wall


class _StubBench:
    """What the estimate reads of a workbench: layer count and the splits' token lengths."""

    def __init__(self, examples=(), tokenizer=None):
        from types import SimpleNamespace

        split = SimpleNamespace(features=[{"input_ids": [0] * 100}] * 8, examples=list(examples))
        self.arch = SimpleNamespace(num_layers=2)
        self.train = self.validation = self.eval = split
        self.tokenizer = tokenizer


def test_status_says_which_learning_rates_are_chosen_and_whether_the_grid_can_grow(
    tiny_model_dir, tiny_data_file, tmp_path
):
    raw = tiny_study(tiny_model_dir, tiny_data_file)
    raw["training"] = {**raw["training"], "learning_rates": [1e-3, 3e-3]}
    raw["data"] = {**raw["data"], "validation_examples": 4}
    out = tmp_path / "study"
    out.mkdir()
    (out / "study.yaml").write_text(dump_yaml(load_study_config(raw).to_dict()))

    def selection(name: str, lr: float, loss: float) -> None:
        key = store.RunKey(name, 0, None, "selection", lr)
        store.write_result(key.run_dir(out), {"status": "finished", "validation_loss": loss})

    # baseline: both rates done, the top one lowest (the edge); top: 1e-3 lowest (inside is
    # impossible with two rates, so both ends are edges); attention-only: one rate missing.
    selection("baseline", 1e-3, 1.0)
    selection("baseline", 3e-3, 0.9)
    selection("top", 1e-3, 0.8)
    selection("top", 3e-3, 0.85)
    selection("attention-only", 1e-3, 1.0)
    text = study_status(out)
    assert (
        "learning rates chosen: 2 of 3 conditions; at the grid's edge: baseline (0.003), "
        "top (0.001); the grid can still grow (no final run is complete)"
    ) in text
    store.write_result(store.RunKey("top", 1, None).run_dir(out), {"status": "finished"})
    assert "the grid can no longer grow (a final run is complete)" in study_status(out)


def _estimate(config, pending, finished, out, monkeypatch, bench=None):
    """The estimate of ``pending`` with a calibration that reports 100 tokens/s."""
    import loraplace.studies.estimate as estimate

    monkeypatch.setattr(estimate, "_calibrate", lambda bench, config: 100.0)
    return estimate.estimate_study(config, pending, bench or _StubBench(), finished, out)


def test_the_estimate_prices_the_task_scoring_of_final_runs_and_the_base_model(
    tiny_model_dir, tiny_data_file, tiny_tokenizer, tmp_path, monkeypatch
):
    from loraplace.data.tasks import choice_example
    from loraplace.training.choices import scoring_tokens

    config = load_study_config(tiny_study(tiny_model_dir, tiny_data_file))
    out = tmp_path / "study"
    keys = config.run_keys()
    tweets = [
        choice_example(f"Tweet {i}: " + "late " * 30, ["negative", "positive"], 0) for i in range(3)
    ]
    scored = scoring_tokens(tweets, tiny_tokenizer)
    assert scored > 0
    plain = _estimate(config, keys, [], out, monkeypatch)
    task = _estimate(config, keys, [], out, monkeypatch, _StubBench(tweets, tiny_tokenizer))
    finals = sum(k.stage != "selection" for k in keys)
    # Every final run scores the task once, and so does the base model, not yet measured.
    assert task.eval_tokens - plain.eval_tokens == (finals + 1) * scored
    assert task.seconds > plain.seconds
    out.mkdir()
    (out / store.BASE_FILE).write_text("{}")
    measured = _estimate(config, keys, [], out, monkeypatch, _StubBench(tweets, tiny_tokenizer))
    assert task.eval_tokens - measured.eval_tokens == 800 + scored  # the base pass, no more


def test_the_estimate_prices_only_the_steps_a_saved_state_has_left(
    tiny_model_dir, tiny_data_file, tmp_path, monkeypatch
):
    import torch

    raw = tiny_study(tiny_model_dir, tiny_data_file)
    raw["training"] = {**raw["training"], "steps": 8}
    config = load_study_config(raw)
    out = tmp_path / "study"
    keys = config.run_keys()
    whole = _estimate(config, keys, [], out, monkeypatch)
    per_run = 8 * 4 * 100  # steps x batch x the stub's 100 tokens per example
    assert whole.train_tokens == len(keys) * per_run

    key = keys[-1]
    key.run_dir(out).mkdir(parents=True)
    resume = key.run_dir(out) / store.RESUME_FILE
    torch.save({"state": SimpleNamespace(step=6)}, resume)
    halfway = _estimate(config, keys, [], out, monkeypatch)
    assert halfway.train_tokens == whole.train_tokens - 6 * 4 * 100
    assert halfway.eval_tokens == whole.eval_tokens  # evaluation is still all to do
    assert halfway.seconds < whole.seconds

    resume.write_bytes(b"not a saved state")  # unreadable: trained again from step 0
    assert _estimate(config, keys, [], out, monkeypatch).train_tokens == whole.train_tokens


def _finished(key, tokens_per_s: float, **extra) -> dict:
    return {
        "name": key.name,
        "seed": key.seed,
        "rank": key.rank,
        "status": "finished",
        "tokens_per_s": tokens_per_s,
        "started_at": "2026-01-01T00:00:00+00:00",
        "finished_at": "2026-01-01T00:01:00+00:00",
        **extra,
    }


def test_runs_copied_from_another_study_do_not_time_this_one(
    tiny_model_dir, tiny_data_file, tmp_path, monkeypatch
):
    config = load_study_config(tiny_study(tiny_model_dir, tiny_data_file))
    keys = config.run_keys()
    baseline = [k for k in keys if k.name == "baseline"]
    copied = [_finished(k, 5.0, reused_from="runs/other/x") for k in baseline]
    found = _estimate(config, keys[2:], copied, tmp_path / "study", monkeypatch)
    assert found.source.startswith("3 calibration steps") and found.rate == 100.0
    assert found.at_once == 1.0  # the copies ran side by side there, not here

    timed = _estimate(
        config, keys[2:], [*copied, _finished(baseline[0], 50.0)], tmp_path, monkeypatch
    )
    assert timed.source == "median of 1 finished runs" and timed.rate == 50.0


def test_a_strategy_placed_per_seed_is_timed_and_priced_by_its_seeds_own_plan(
    tiny_model_dir, tiny_data_file, tmp_path, monkeypatch
):
    # As a study resolves an automatic strategy with probe_per_seed: plans keyed by seed.
    config = load_study_config(tiny_study(tiny_model_dir, tiny_data_file))
    top = config.plans[("top", None)]  # mlp@last:1: its layers run from the last one up
    assert top.lowest_layer == 1
    config.plans[("baseline", None, 0)] = config.plans.pop(("baseline", None))
    config.plans[("baseline", None, 1)] = top
    keys = config.run_keys()
    seed1 = next(k for k in keys if k.name == "baseline" and k.seed == 1)
    (tmp_path / store.BASE_FILE).write_text("{}")  # the base model is measured already
    found = _estimate(config, [seed1], [_finished(seed1, 60.0)], tmp_path, monkeypatch)
    depth = (2 - 1 + 2) / (2 + 2)  # 2 layers from layer 1 up, the head costing 2 layers
    assert found.rate == pytest.approx(60.0 / depth)
    assert found.seconds == pytest.approx(depth * (3 * 4 * 100 + 8 * 100 / 2) / found.rate)
