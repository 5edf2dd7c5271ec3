"""Runs shared between studies (``reuse``): a run another study made exactly as this one would
is copied, equals what training it here gives, and nothing else is ever copied."""

from __future__ import annotations

import json

import pytest
from helpers import tiny_study

from loraplace.config.study import ConfigError, load_study_config
from loraplace.studies.estimate import estimate_only
from loraplace.studies.identity import prepare_study_dir, study_identity
from loraplace.studies.runner import run_study


def _donor_raw(model_dir, data_file) -> dict:
    raw = tiny_study(model_dir, data_file, name="donor", strategies={"all": "all", "top": "mlp"})
    raw["data"] = {**raw["data"], "validation_examples": 8}
    raw["eval"] = {"accuracy_examples": 0, "checkpoints": [0.5]}
    raw["training"] = {**raw["training"], "steps": 4, "learning_rates": [1.0e-3, 3.0e-3]}
    raw["ranks"] = [2]
    raw["reference"] = "all"
    return raw


def _taker_raw(model_dir, data_file, reuse: list[str]) -> dict:
    """Another study sharing one condition with the donor under another name and spelling."""
    raw = _donor_raw(model_dir, data_file)
    del raw["ranks"]
    raw.update(name="taker", strategies={"all-r2": "all:r2", "attn": "attn:r2"}, reuse=reuse)
    raw["reference"] = "all-r2"
    return raw


def _records(out, part: str) -> dict[str, dict]:
    return {
        p.parent.name: json.loads(p.read_text()) for p in sorted((out / part).glob("*/result.json"))
    }


def test_a_shared_condition_is_copied_and_equals_training_it(
    tiny_model_dir, tiny_data_file, tmp_path, capsys
):
    donor = tmp_path / "donor"
    assert (
        run_study(
            load_study_config(_donor_raw(tiny_model_dir, tiny_data_file)),
            donor,
            show_progress=False,
        )
        == 0
    )
    taker, fresh = tmp_path / "taker", tmp_path / "fresh"
    config = load_study_config(_taker_raw(tiny_model_dir, tiny_data_file, [str(donor)]))
    capsys.readouterr()
    assert run_study(config, taker, show_progress=False) == 0
    assert "reuse: 2 runs copied" in capsys.readouterr().out  # 2 selection runs, then 2 finals
    # --estimate for a new directory prices only the runs it would train.
    capsys.readouterr()
    assert estimate_only(config, tmp_path / "not-yet") == 0
    printed = capsys.readouterr().out
    # all-r2's 2 selection runs, and its 2 final runs at the rate they choose
    assert "note: 2 selection and 2 final run(s) will be copied from the reuse" in printed
    assert "estimate: 4 runs to go" in printed  # 8 runs, 4 of them copied
    alone = load_study_config(_taker_raw(tiny_model_dir, tiny_data_file, []))
    assert run_study(alone, fresh, show_progress=False) == 0

    for part in ("selection", "runs"):
        got, trained, given = _records(taker, part), _records(fresh, part), _records(donor, part)
        copied = {name for name, r in got.items() if r.get("reused_from")}
        assert copied == {name for name in got if name.startswith("all-r2")}
        assert len(copied) == 2
        for name in copied:
            record = got[name]
            source = record["reused_from"]
            assert source.startswith(f"{donor}/{part}/all--r2--")
            origin = given[source.rsplit("/", 1)[-1]]
            origin["run_dir_name"] = source.rsplit("/", 1)[-1]
            # This study's names; the donor's measurements.
            assert (record["name"], record["spec"], record["rank"]) == ("all-r2", "all:r2", None)
            assert record["train_time_s"] == origin["train_time_s"]
            # And the same numbers as training the run here.
            metric = "validation_loss" if part == "selection" else "eval_loss"
            assert record[metric] == pytest.approx(trained[name][metric], rel=1e-6)
            assert record["learning_rate"] == trained[name]["learning_rate"]
            if part == "runs":
                assert record["selected_from"] == [1e-3, 3e-3]
                assert (taker / part / name / "eval_examples.jsonl").read_text() == (
                    donor / part / origin["run_dir_name"] / "eval_examples.jsonl"
                ).read_text()
        for name in set(got) - copied:
            assert "reused_from" not in got[name]
            metric = "validation_loss" if part == "selection" else "eval_loss"
            assert got[name][metric] == pytest.approx(trained[name][metric], rel=1e-6)
    from loraplace.report.build import write_report

    report = (write_report(taker) / "report.md").read_text()
    assert "4 runs were copied from another study (" in report
    assert not list(taker.rglob("checkpoints"))
    assert (taker / "runs" / "all-r2--seed1" / "adapter" / "adapter_config.json").is_file()
    # A donor whose final runs are gone still gives its selection runs; the finals are priced.
    import shutil

    for run_dir in (donor / "runs").glob("all--r2--*"):
        shutil.rmtree(run_dir)
    capsys.readouterr()
    assert estimate_only(config, tmp_path / "not-yet") == 0
    printed = capsys.readouterr().out
    assert "note: 2 selection and 0 final run(s) will be copied" in printed
    assert "estimate: 6 runs to go" in printed


def test_an_automatic_placement_study_copies_its_hand_placement_and_trains_the_rest(
    tiny_model_dir, tiny_data_file, tmp_path, capsys
):
    # As examples/auto-placement-r2.yaml against examples/budget-curves.yaml.
    raw = _donor_raw(tiny_model_dir, tiny_data_file)
    raw["training"] = {**raw["training"], "seeds": [0]}
    donor = tmp_path / "donor"
    assert run_study(load_study_config(raw), donor, show_progress=False) == 0
    taker_raw = _taker_raw(tiny_model_dir, tiny_data_file, [str(donor)])
    taker_raw["training"] = {**taker_raw["training"], "seeds": [0]}
    taker_raw["strategies"] = {
        "all-r2": "all:r2",
        "random-r2": {"auto": {"method": "random", "budget": "all-r2", "rank": 8}},
    }
    config = load_study_config(taker_raw)
    capsys.readouterr()
    assert estimate_only(config, tmp_path / "taker") == 0
    printed = capsys.readouterr().out
    assert "note: 3 runs of automatic strategies are priced as all-layer runs" in printed
    assert "note: 2 selection and 1 final run(s) will be copied" in printed
    assert "estimate: 3 runs to go" in printed
    taker = tmp_path / "taker"
    assert run_study(config, taker, show_progress=False) == 0
    # The estimate the study prints as it starts leaves out the same copies.
    assert "estimate: 3 runs to go" in capsys.readouterr().out
    budget = config.plans[("all-r2", None)].trainable_params
    for part in ("selection", "runs"):
        records = _records(taker, part)
        assert len(records) == (4 if part == "selection" else 2)
        for name, record in records.items():
            copied = record.get("reused_from") is not None
            assert copied == name.startswith("all-r2"), name
            if name.startswith("random-r2"):
                assert record["auto"]["method"] == "random"
                assert 0.95 * budget <= record["trainable_params"] <= budget


def test_only_a_study_made_the_same_way_is_used(tiny_model_dir, tiny_data_file, tmp_path, capsys):
    donor = tmp_path / "donor"
    raw = _donor_raw(tiny_model_dir, tiny_data_file)
    raw["training"] = {**raw["training"], "steps": 3, "seeds": [0]}
    assert run_study(load_study_config(raw), donor, show_progress=False) == 0
    taker_raw = _taker_raw(tiny_model_dir, tiny_data_file, [str(donor), str(tmp_path / "gone")])
    taker_raw["training"] = {**taker_raw["training"], "seeds": [0]}
    taker = tmp_path / "taker"
    capsys.readouterr()
    assert run_study(load_study_config(taker_raw), taker, show_progress=False) == 0
    printed = capsys.readouterr().out
    assert f"reuse: skipping '{donor}': its runs were made differently (differs in: training)" in (
        printed
    )
    assert f"reuse: skipping '{tmp_path / 'gone'}': no such directory" in printed
    assert "copied" not in printed
    assert not any(r.get("reused_from") for r in _records(taker, "selection").values())


def test_reuse_is_checked_and_does_not_bind_a_study_directory(
    tiny_model_dir, tiny_data_file, tmp_path
):
    with pytest.raises(ConfigError, match="reuse must be a list of study directories"):
        load_study_config({**_taker_raw(tiny_model_dir, tiny_data_file, []), "reuse": "runs/x"})
    first = load_study_config(_taker_raw(tiny_model_dir, tiny_data_file, ["a"]))
    assert first.to_dict()["reuse"] == ["a"]
    plain = load_study_config(_taker_raw(tiny_model_dir, tiny_data_file, []))
    assert "reuse" not in plain.to_dict()
    out = tmp_path / "out"
    out.mkdir()
    identity = study_identity(first)
    prepare_study_dir(first, out, identity)
    # Where runs may be copied from does not change any run: the study resumes under another list.
    prepare_study_dir(
        load_study_config(_taker_raw(tiny_model_dir, tiny_data_file, ["b"])), out, identity
    )


def test_a_run_made_with_other_versions_or_device_is_not_used(
    tiny_model_dir, tiny_data_file, tmp_path
):
    from loraplace import store
    from loraplace.config.yamlio import dump_yaml
    from loraplace.provenance import versions
    from loraplace.studies.reuse import find_donors

    config = load_study_config(_taker_raw(tiny_model_dir, tiny_data_file, []))
    identity = study_identity(config)
    donor = tmp_path / "donor"
    donor.mkdir()
    (donor / "study.yaml").write_text(dump_yaml(config.to_dict()))
    store.write_json_atomic(donor / store.IDENTITY_FILE, identity)
    plan = config.plans[("all-r2", None)]
    made = {
        "stage": "final",
        "seed": 0,
        "learning_rate": 1e-3,
        "status": "finished",
        "placement": {str(k): v for k, v in plan.placement.items()},
        "versions": versions(),
        "hardware": {"device": "cpu"},
    }
    changed = {
        "same": {},
        "torch": {"versions": {**versions(), "torch": "0.0"}},
        "device": {"hardware": {"device": "cuda"}},
        "failed": {"status": "failed"},
    }
    for seed, (name, change) in enumerate(changed.items()):
        store.write_result(donor / "runs" / name, {**made, "seed": seed, **change})
    (found,) = find_donors(config.to_dict(), identity, [str(donor)], "cpu")
    assert [p.name for p in found.runs.values()] == ["same"]
    assert found.find("final", 0, 1e-3, plan.placement) == donor / "runs" / "same"
    assert found.find("final", 0, 3e-3, plan.placement) is None
    assert found.find("selection", 0, 1e-3, plan.placement) is None
    other = config.plans[("attn", None)].placement
    assert found.find("final", 0, 1e-3, other) is None
