"""Tracking to MLflow (a real SQLite store) and TensorBoard (real event files), read back."""

from __future__ import annotations

import copy
import json
import logging
import shutil
import sys
import warnings
from pathlib import Path

import pytest

from loraplace.errors import LoraplaceError
from loraplace.tracking.backends import open_tracking
from loraplace.tracking.core import (
    FINAL_METRICS,
    TrackingWarning,
    check_backends,
    flatten_params,
)

STUDY_PARAMS = {
    "name": "toy",
    "lora": {"rank": 8, "alpha": 16},
    "training": {"learning_rate": 2e-4, "steps": 4, "seeds": [0, 1]},
}
CURVE = [
    {"step": s, "loss": 3.0 - 0.25 * s, "learning_rate": 1e-4, "grad_norm": None}
    for s in (1, 2, 3, 4)
]


def _result(name: str, seed: int, loss: float | None) -> dict:
    failed = loss is None
    return {
        "name": name,
        "spec": name,
        "seed": seed,
        "ranks": {name: 8},
        "status": "failed" if failed else "finished",
        "error": "nan_loss" if failed else None,
        "trainable_params": 1234,
        "total_params": 100_000,
        "eval_loss": loss,
        "perplexity": None if failed else 2.0 * loss,
        "accuracy": None if failed else 0.25,
        "train_time_s": 1.5,
        "tokens_per_s": 400.0,
        "peak_memory_mb": 512.0,
        "steps": 4,
        "config": {"lora": {"rank": 8, "alpha": 16}, "training": {"learning_rate": 2e-4}},
    }


def _run_dir(root: Path, name: str, seed: int, result: dict) -> tuple[list[Path], Path | None]:
    run = root / "runs" / f"{name}--seed{seed}"
    run.mkdir(parents=True)
    (run / "result.json").write_text(json.dumps(result))
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in CURVE))
    adapter = None
    if result["status"] == "finished":
        adapter = run / "adapter"
        adapter.mkdir()
        (adapter / "adapter_config.json").write_text('{"r": 8}')
    return [run / "result.json", run / "metrics.jsonl"], adapter


def _fake_study(tracking, root: Path, runs: list[tuple[str, int, float | None]]) -> list[dict]:
    """What the study runner does per run: params, the curve, an eval checkpoint, the result."""
    results = []
    for name, seed, loss in runs:
        result = _result(name, seed, loss)
        files, adapter = _run_dir(root, name, seed, result)
        with tracking.run(f"{name}--seed{seed}", {"strategy": name, "seed": seed}) as run:
            for record in CURVE:
                run.log_metrics(record["step"], record)
            if loss is not None:
                run.log_metrics(2, {"eval_loss": loss + 0.5})
            run.log_result(result, files, adapter)
        results.append(result)
    return results


@pytest.fixture(autouse=True)
def _quiet_mlflow():
    for name in ("mlflow", "alembic"):
        logging.getLogger(name).setLevel(logging.WARNING)


@pytest.fixture(scope="module")
def empty_store(tmp_path_factory) -> Path:
    """An MLflow SQLite store with its tables made: copying it saves each test ~2 s of setup."""
    pytest.importorskip("mlflow")
    from mlflow import MlflowClient

    path = tmp_path_factory.mktemp("store") / "mlflow.db"
    MlflowClient(f"sqlite:///{path}").search_experiments()
    return path


@pytest.fixture
def study(tmp_path, empty_store) -> Path:
    """A study directory whose default MLflow store exists, still without any experiment."""
    (tmp_path / "study").mkdir()
    shutil.copy(empty_store, tmp_path / "study" / "mlflow.db")
    return tmp_path / "study"


@pytest.fixture
def mlflow_client(monkeypatch):
    """A client on the study's default store, with MLFLOW_TRACKING_URI unset while tracking."""
    pytest.importorskip("mlflow")
    from mlflow import MlflowClient

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    return lambda study: MlflowClient(f"sqlite:///{study.resolve()}/mlflow.db")


def _search(study: Path, monkeypatch) -> list:
    import mlflow

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{study.resolve()}/mlflow.db")
    return mlflow.search_runs(experiment_names=["toy"], output_format="list")


def test_mlflow_study_parent_and_nested_runs(tmp_path, monkeypatch, mlflow_client):
    study = tmp_path / "study"  # no store yet: open_tracking makes it
    with open_tracking(["mlflow"], study, "toy", STUDY_PARAMS) as tracking:
        results = _fake_study(tracking, study, [("attn", 0, 1.25), ("mlp", 1, None)])
    runs = _search(study, monkeypatch)
    assert len(runs) == 3
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    assert len(parents) == 1
    parent = parents[0]
    assert parent.info.run_name == "toy" and parent.info.status == "FINISHED"
    assert parent.data.params["lora.rank"] == "8"
    assert parent.data.params["training.seeds"] == "[0, 1]"
    assert parent.data.tags["loraplace.study_dir"] == str(study.resolve())

    children = {r.info.run_name: r for r in runs if r is not parent}
    assert set(children) == {"attn--seed0", "mlp--seed1"}
    assert all(r.data.tags["mlflow.parentRunId"] == parent.info.run_id for r in children.values())
    ok, bad = children["attn--seed0"], children["mlp--seed1"]
    assert (ok.info.status, bad.info.status) == ("FINISHED", "FAILED")
    assert (ok.data.tags["status"], bad.data.tags["status"]) == ("finished", "failed")
    assert bad.data.tags["error"] == "nan_loss" and "error" not in ok.data.tags
    for key, value in {
        "strategy": "attn",
        "seed": "0",
        "spec": "attn",
        "trainable_params": "1234",
        "lora.rank": "8",
        "training.learning_rate": "0.0002",
        "ranks.attn": "8",
    }.items():
        assert ok.data.params[key] == value, key
    # Latest values: the final metrics, logged at the run's last step.
    assert ok.data.metrics["eval_loss"] == 1.25 and ok.data.metrics["perplexity"] == 2.5
    assert ok.data.metrics["accuracy"] == 0.25 and ok.data.metrics["peak_memory_mb"] == 512.0
    assert ok.data.metrics["train_time_s"] == 1.5 and ok.data.metrics["tokens_per_s"] == 400.0
    assert "eval_loss" not in bad.data.metrics and bad.data.metrics["train_time_s"] == 1.5

    client = mlflow_client(study)
    assert client.get_experiment_by_name("toy").tags["mlflow.experimentKind"] == "finetuning"
    loss = client.get_metric_history(ok.info.run_id, "loss")
    assert [(m.step, m.value) for m in loss] == [(r["step"], r["loss"]) for r in CURVE]
    assert "grad_norm" not in ok.data.metrics  # None in every record: nothing to plot
    evals = sorted(
        (m.step, m.value) for m in client.get_metric_history(ok.info.run_id, "eval_loss")
    )
    assert evals == [(2, 1.75), (4, 1.25)]  # the checkpoint, then the final value

    names = {a.path for a in client.list_artifacts(ok.info.run_id)}
    assert names == {"result.json", "metrics.jsonl", "adapter"}
    assert [a.path for a in client.list_artifacts(ok.info.run_id, "adapter")] == [
        "adapter/adapter_config.json"
    ]
    assert {a.path for a in client.list_artifacts(bad.info.run_id)} == {
        "result.json",
        "metrics.jsonl",
    }
    stored = Path(ok.info.artifact_uri.removeprefix("file://")) / "result.json"
    assert stored.is_relative_to(study.resolve() / "mlartifacts")
    assert json.loads(stored.read_text()) == results[0]


def test_mlflow_resume_reuses_the_parent_run(study, monkeypatch, mlflow_client):
    with open_tracking(["mlflow"], study, "toy", STUDY_PARAMS) as tracking:
        _fake_study(tracking, study, [("attn", 0, 1.25)])
        # A kill -9 in the middle of the next run: its MLflow run is never ended.
        tracking.run("mlp--seed0", {"seed": 0}).__enter__()
    grown = {**STUDY_PARAMS, "training": {**STUDY_PARAMS["training"], "seeds": [0, 1, 2]}}
    with open_tracking(["mlflow"], study, "toy", {**grown, "resumed": True}) as tracking:
        _fake_study(tracking, study / "again", [("mlp", 0, 1.5)])

    runs = _search(study, monkeypatch)
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    parent = parents[0]
    assert parent.data.params["resumed"] == "True"  # a new key is added
    assert parent.data.params["training.seeds"] == "[0, 1]"  # a logged param keeps its value
    children = [r for r in runs if r is not parent]
    assert all(r.data.tags["mlflow.parentRunId"] == parent.info.run_id for r in children)
    by_status = sorted((r.info.run_name, r.info.status) for r in children)
    assert by_status == [
        ("attn--seed0", "FINISHED"),
        ("mlp--seed0", "FINISHED"),
        ("mlp--seed0", "KILLED"),
    ]
    assert len(mlflow_client(study).search_experiments()) == 2  # "Default" and "toy"


def test_mlflow_respects_tracking_uri_from_the_environment(tmp_path, monkeypatch, empty_store):
    elsewhere = tmp_path / "store" / "shared.db"
    elsewhere.parent.mkdir()
    shutil.copy(empty_store, elsewhere)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{elsewhere}")
    monkeypatch.chdir(tmp_path)  # the store's default artifact root is relative to the cwd
    study = tmp_path / "study"
    with open_tracking(["mlflow"], study, "toy", STUDY_PARAMS) as tracking:
        _fake_study(tracking, study, [("attn", 0, 1.25)])
    assert elsewhere.is_file() and not (study / "mlflow.db").exists()
    assert len(_search_uri(f"sqlite:///{elsewhere}")) == 2


def _search_uri(uri: str) -> list:
    from mlflow import MlflowClient

    client = MlflowClient(uri)
    return client.search_runs([client.get_experiment_by_name("toy").experiment_id])


def test_a_failing_store_loses_no_run(study, monkeypatch, mlflow_client):
    from mlflow import MlflowClient

    def locked(*args, **kwargs):
        raise RuntimeError("database is locked\nsecond line of the traceback text")

    tracking = open_tracking(["mlflow"], study, "toy", STUDY_PARAMS)
    monkeypatch.setattr(MlflowClient, "log_batch", locked)
    result = _result("attn", 0, 1.25)
    files, adapter = _run_dir(study, "attn", 0, result)
    before = copy.deepcopy(result)
    with pytest.warns(TrackingWarning) as caught:
        with tracking.run("attn--seed0", {"seed": 0}) as run:
            for record in CURVE:
                run.log_metrics(record["step"], record)
            run.log_result(result, files, adapter)
        tracking.close()
    messages = [str(w.message) for w in caught]
    assert len(messages) == 2  # the first failure, then the count at close
    assert "database is locked" in messages[0] and "\n" not in messages[0]
    assert messages[1].startswith("tracking calls that failed (mlflow: 6)")
    assert result == before and json.loads(files[0].read_text()) == before
    assert tracking.failures == {"mlflow": 6}


def test_tensorboard_event_files(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams import plugin_data_pb2

    study = tmp_path / "study"
    with open_tracking(["tensorboard"], study, "toy", STUDY_PARAMS) as tracking:
        _fake_study(tracking, study, [("attn", 0, 1.25), ("mlp", 1, None)])
    assert sorted(p.name for p in (study / "tensorboard").iterdir()) == [
        "attn--seed0",
        "mlp--seed1",
    ]

    events = EventAccumulator(str(study / "tensorboard" / "attn--seed0"))
    events.Reload()
    scalars = events.Tags()["scalars"]
    assert {"loss", "learning_rate", "eval_loss", "perplexity", "train_time_s"} <= set(scalars)
    loss = [(e.step, e.value) for e in events.Scalars("loss")]
    assert loss == [(r["step"], pytest.approx(r["loss"])) for r in CURVE]
    assert [(e.step, e.value) for e in events.Scalars("eval_loss")] == [(2, 1.75), (4, 1.25)]
    assert [(e.step, e.value) for e in events.Scalars("accuracy")] == [(4, 0.25)]
    hparams = events.PluginTagToContent("hparams")
    start = plugin_data_pb2.HParamsPluginData.FromString(hparams["_hparams_/session_start_info"])
    values = start.session_start_info.hparams
    assert values["strategy"].string_value == "attn" and values["lora.rank"].number_value == 8
    assert values["training.learning_rate"].number_value == pytest.approx(2e-4)
    experiment = plugin_data_pb2.HParamsPluginData.FromString(hparams["_hparams_/experiment"])
    assert [m.name.tag for m in experiment.experiment.metric_infos] == list(FINAL_METRICS)
    failed = EventAccumulator(str(study / "tensorboard" / "mlp--seed1"))
    failed.Reload()
    assert "eval_loss" not in failed.Tags()["scalars"] and "loss" in failed.Tags()["scalars"]


def test_tensorboard_rerun_replaces_the_earlier_attempt(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    study = tmp_path / "study"
    for loss in (1.25, 1.5):
        with open_tracking(["tensorboard"], study, "toy", STUDY_PARAMS) as tracking:
            with tracking.run("attn--seed0", {}) as run:
                run.log_result(_result("attn", 0, loss), [], None)
    run_dir = study / "tensorboard" / "attn--seed0"
    assert len(list(run_dir.glob("events.out.tfevents.*"))) == 1
    events = EventAccumulator(str(run_dir))
    events.Reload()
    assert [e.value for e in events.Scalars("eval_loss")] == [1.5]


def test_no_backend_is_a_no_op(tmp_path):
    study = tmp_path / "study"
    with open_tracking([], study, "toy", STUDY_PARAMS) as tracking:
        _fake_study(tracking, study, [("attn", 0, 1.25)])
        assert tracking.backends == []
    assert sorted(p.name for p in study.iterdir()) == ["runs"]


@pytest.mark.parametrize("backend, module", [("mlflow", "mlflow"), ("tensorboard", "tensorboard")])
def test_missing_extra_is_a_one_line_error(tmp_path, monkeypatch, backend, module):
    monkeypatch.setitem(sys.modules, module, None)  # makes `import <module>` raise ImportError
    with pytest.raises(LoraplaceError) as err:
        open_tracking([backend], tmp_path, "toy", {})
    message = str(err.value)
    assert "\n" not in message
    assert f"pip install 'loraplace[{backend}]'" in message and repr(backend) in message


def test_unknown_backend_lists_the_valid_ones(tmp_path):
    with pytest.raises(LoraplaceError, match=r"'wandb'.*valid backends: mlflow, tensorboard$"):
        open_tracking(["mlflow", "wandb"], tmp_path, "toy", {})
    assert check_backends([" MLflow", "tensorboard", "mlflow"]) == ["mlflow", "tensorboard"]


def test_flatten_params():
    flat = flatten_params({"lora": {"rank": 8, "targets": ["q", "v"]}, "seed": 0, "x": None})
    assert flat == {"lora.rank": 8, "lora.targets": '["q", "v"]', "seed": 0, "x": "None"}


def test_a_run_that_raises_is_ended_as_failed(study, monkeypatch, mlflow_client):
    with warnings.catch_warnings():
        warnings.simplefilter("error", TrackingWarning)  # no tracking problem here
        with open_tracking(["mlflow"], study, "toy", STUDY_PARAMS) as tracking:
            with pytest.raises(ValueError, match="boom"):
                with tracking.run("attn--seed0", {"seed": 0}):
                    raise ValueError("boom")
    child = next(r for r in _search(study, monkeypatch) if r.info.run_name == "attn--seed0")
    assert child.info.status == "FAILED"


def test_tracking_leaves_the_random_number_generators_alone(study):
    # Training draws from these; tracking that consumed a number would change the next run.
    pytest.importorskip("tensorboard")
    import random

    import numpy as np
    import torch

    random.seed(1)
    np.random.seed(1)
    torch.manual_seed(1)
    before = (random.getstate(), np.random.get_state()[1].copy(), torch.get_rng_state())
    with open_tracking(["mlflow", "tensorboard"], study, "toy", STUDY_PARAMS) as tracking:
        _fake_study(tracking, study, [("attn", 0, 1.25)])
    assert random.getstate() == before[0]
    assert (np.random.get_state()[1] == before[1]).all()
    assert torch.equal(torch.get_rng_state(), before[2])
