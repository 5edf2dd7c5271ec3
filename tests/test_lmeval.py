"""lm-evaluation-harness as a cross-check: ``loraplace evaluate --lm-eval`` (extra ``[lmeval]``).

On a tiny study of the built-in task ``piqa`` (a tiny random LLaMA, one trained adapter),
lm-eval, reading the task's shipped YAML and local problems, must choose the same answer as
loraplace's own scorer on every problem, with the same log-likelihoods. Without lm-eval
installed these tests skip, except the one-line error that names the extra.
"""

from __future__ import annotations

import importlib.util
import json

import pytest
import yaml
from helpers import tiny_study

import loraplace
from loraplace.cli.main import main
from loraplace.config.study import load_study_config
from loraplace.errors import LoraplaceError
from loraplace.lmeval import bridge
from loraplace.lmeval.bridge import BUILTIN_LMEVAL_TASKS, evaluate_study, prepare_tasks
from loraplace.settings import DataConfig

HAS_LM_EVAL = importlib.util.find_spec("lm_eval") is not None
needs_lm_eval = pytest.mark.skipif(not HAS_LM_EVAL, reason="lm-eval (extra [lmeval]) not installed")


def test_a_missing_extra_is_one_line_naming_it(monkeypatch, tmp_path, capsys):
    real = importlib.util.find_spec
    monkeypatch.setattr(
        bridge.importlib.util,
        "find_spec",
        lambda name, *a: None if name == "lm_eval" else real(name, *a),
    )
    with pytest.raises(LoraplaceError) as info:
        evaluate_study(tmp_path, ["piqa"])
    assert "[lmeval]" in str(info.value) and "\n" not in str(info.value)
    assert main(["evaluate", str(tmp_path), "--lm-eval", "piqa"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "optional extra [lmeval]" in err


@pytest.mark.parametrize("task", list(BUILTIN_LMEVAL_TASKS))
def test_each_built_in_task_ships_a_yaml_reading_local_problems(task, tmp_path):
    (prepared,) = prepare_tasks([task], DataConfig(eval_examples=5), tmp_path, limit=3)
    config = yaml.safe_load((tmp_path / f"{BUILTIN_LMEVAL_TASKS[task]}.yaml").read_text())
    assert config["task"] == BUILTIN_LMEVAL_TASKS[task] and config["dataset_path"] == "json"
    data_file = config["dataset_kwargs"]["data_files"]["test"]
    rows = [json.loads(line) for line in open(data_file)]
    assert len(rows) == 3 and rows == [e.doc for e in prepared.examples]
    assert prepared.data_sha256 is not None


@pytest.fixture(scope="module")
def piqa_study(tiny_model_dir, tmp_path_factory):
    raw = tiny_study(
        tiny_model_dir,
        "piqa",
        data={"dataset": "piqa", "train_examples": 16, "eval_examples": 24, "max_length": 128},
        lora={"rank": 4, "alpha": 8, "dropout": 0.0},
        training={"steps": 3, "batch_size": 4, "learning_rate": 2e-2, "seeds": [0]},
        eval={"accuracy_examples": 0},
        strategies={"all": "all"},
        reference="all",
    )
    out = tmp_path_factory.mktemp("piqa-study")
    config = load_study_config(raw)
    assert loraplace.study(config, out=out, show_progress=False, report=False) == 0
    return out


@needs_lm_eval
def test_lm_eval_chooses_loraplaces_answer_on_every_problem(piqa_study):
    found = evaluate_study(piqa_study, ["piqa"], device="cpu")
    run = "runs/all--seed0"
    assert set(found) == {"base", run}
    for label, answers in (
        ("base", piqa_study / "base_eval_answers.jsonl"),
        (run, piqa_study / run / "eval_answers.jsonl"),
    ):
        scores = found[label]["tasks"]["piqa"]
        assert scores["agreement"] == {"problems": 24, "same_choice": 24, "same_choice_norm": 24}
        mine = [json.loads(line) for line in answers.open()]
        theirs = found[label]["samples"]["piqa"]
        assert [s["doc_id"] for s in theirs] == [r["example"] for r in mine]
        for s, r in zip(theirs, mine):
            assert s["loglik"] == pytest.approx(r["loglik"], abs=1e-4)
            assert s["acc"] == float(r["correct"]) and s["acc_norm"] == float(r["correct_norm"])
    result = json.loads((piqa_study / run / "result.json").read_text())
    assert found[run]["tasks"]["piqa"]["metrics"]["acc"] == pytest.approx(result["accuracy"])
    assert found[run]["tasks"]["piqa"]["metrics"]["acc_norm"] == pytest.approx(
        result["accuracy_norm"]
    )
    # The adapter was used: the trained run's log-likelihoods are not the base model's.
    base_ll = [x for s in found["base"]["samples"]["piqa"] for x in s["loglik"]]
    run_ll = [x for s in found[run]["samples"]["piqa"] for x in s["loglik"]]
    assert max(abs(a - b) for a, b in zip(base_ll, run_ll)) > 1e-2
    stored = json.loads((piqa_study / run / "lm_eval.json").read_text())
    assert stored["tasks"]["piqa"]["agreement"]["same_choice"] == 24


@needs_lm_eval
def test_a_scored_run_is_kept_and_a_generated_task_runs(piqa_study, capsys):
    assert main(["evaluate", str(piqa_study), "--lm-eval", "piqa", "--device", "cpu"]) == 0
    assert "already scored" in capsys.readouterr().out
    found = evaluate_study(piqa_study, ["asdiv"], limit=2, device="cpu")
    scores = found["runs/all--seed0"]["tasks"]["asdiv"]
    assert scores["problems"] == 2 and 0 <= scores["metrics"]["exact_match"] <= 1
    assert all("response" in s for s in found["base"]["samples"]["asdiv"])


@needs_lm_eval
def test_an_unknown_task_is_one_line(piqa_study, capsys):
    code = main(["evaluate", str(piqa_study), "--lm-eval", "no_such_task_anywhere"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "\n" not in err and "no_such_task_anywhere" in err


@needs_lm_eval
def test_the_report_shows_lm_evals_scores(piqa_study):
    from loraplace.report.build import write_report

    evaluate_study(piqa_study, ["piqa"], device="cpu")
    report = (write_report(piqa_study) / "report.md").read_text()
    section = report.split("lm-evaluation-harness", 1)[1]
    assert "base model" in section and "24 / 24" in section and r"acc\_norm" in section


@needs_lm_eval
def test_a_users_own_task_yaml_runs_and_earlier_scores_are_kept(piqa_study, tmp_path):
    problems = tmp_path / "mine.jsonl"
    problems.write_text(
        "".join(
            json.dumps({"q": f"{a} plus {a} is", "options": [str(2 * a), str(a)], "gold": 0}) + "\n"
            for a in range(1, 5)
        )
    )
    (tmp_path / "my_sums.yaml").write_text(
        "task: my_sums\ndataset_path: json\n"
        f"dataset_kwargs: {{data_files: {{test: {json.dumps(str(problems))}}}}}\n"
        "test_split: test\noutput_type: multiple_choice\n"
        'doc_to_text: "{{q}}"\ndoc_to_choice: "{{options}}"\ndoc_to_target: gold\n'
        "metric_list: [{metric: acc, aggregation: mean, higher_is_better: true}]\n"
    )
    evaluate_study(piqa_study, ["piqa"], device="cpu")
    found = evaluate_study(piqa_study, ["my_sums"], include=[tmp_path], device="cpu")
    stored = json.loads((piqa_study / "runs/all--seed0/lm_eval.json").read_text())
    assert {"piqa", "my_sums"} <= set(stored["tasks"])  # (and asdiv, if scored before)
    assert (
        stored["tasks"]["my_sums"]["problems"] == 4
        and "agreement" not in stored["tasks"]["my_sums"]
    )
    assert found["base"]["tasks"]["my_sums"]["metrics"]["acc"] in (0, 0.25, 0.5, 0.75, 1)
