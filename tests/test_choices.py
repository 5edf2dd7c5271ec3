"""Accuracy by multiple-choice log-likelihood (acc, acc_norm) and by a generated number.

The rules are checked on hand-made losses (argmax, first of a tie, length in characters), the
log-likelihoods against a direct computation on a tiny random model, and a run on a task
writes each problem's answer, its accuracy fields and the base model's.
"""

from __future__ import annotations

import json
import math

import pytest
import torch

from loraplace.data.batching import DynamicPaddingCollator, encode_prompt
from loraplace.data.context import context_prompt
from loraplace.data.tasks import NumberExample, choice_example
from loraplace.settings import DataConfig, EvalSettings, LoraSettings, TrainingSettings
from loraplace.store import RunKey
from loraplace.training.choices import (
    TaskScore,
    choice_features,
    first_number,
    generate_numbers,
    score_choices,
    score_task,
)
from loraplace.training.evaluate import eval_losses
from loraplace.training.records import RunSpec
from loraplace.training.run import train_one
from loraplace.training.workbench import Workbench


def _fixed_losses(values: dict[tuple[int, int], float]):
    """A loss pass returning ``-loglik`` per (problem, choice) from a table."""

    def losses(features):
        return [(f["example"], 1, -values[f["example"], f["choice"]]) for f in features]

    return losses


def test_acc_takes_the_highest_loglik_and_acc_norm_divides_by_characters(tiny_tokenizer):
    examples = [
        choice_example("Q:", ["a", "bbbb"], 1),  # -2 vs -4: acc picks "a"; per char -2 vs -1
        choice_example("Q:", ["x", "y", "z"], 2),  # a tie between 1 and 2 goes to 1
    ]
    table = {(0, 0): -2.0, (0, 1): -4.0, (1, 0): -5.0, (1, 1): -1.0, (1, 2): -1.0}
    rows = score_choices(examples, tiny_tokenizer, _fixed_losses(table))
    assert [r["chosen"] for r in rows] == [0, 1]
    assert [r["chosen_norm"] for r in rows] == [1, 1]
    assert [r["correct"] for r in rows] == [False, False]
    assert [r["correct_norm"] for r in rows] == [True, False]
    assert rows[0]["loglik"] == [-2.0, -4.0] and rows[0]["chars"] == [1, 4]
    score = TaskScore("acc", rows)
    record = score.record()
    assert record["accuracy"] == 0 and record["accuracy_norm"] == 0.5
    assert record["correct"] == [False, False] and record["correct_norm"] == [True, False]
    assert record["accuracy_metric"] == "acc" and record["accuracy_examples"] == 2


def test_choice_features_score_the_continuation_only(tiny_tokenizer):
    example = choice_example("Question: 2 apples plus 3?\nAnswer:", ["5", "six"], 0)
    features = choice_features([example], tiny_tokenizer)
    context = encode_prompt(tiny_tokenizer, example.prompt)
    assert [f["choice"] for f in features] == [0, 1]
    for feature, choice in zip(features, example.choices):
        assert feature["input_ids"][: len(context)] == context
        scored = [t for t in feature["labels"] if t != -100]
        assert tiny_tokenizer.decode(scored) == " " + choice
        assert feature["labels"][: len(context)] == [-100] * len(context)


@pytest.fixture(scope="module")
def tiny_model(tiny_model_dir):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()


def test_logliks_equal_a_direct_sum_of_token_log_probabilities(tiny_model, tiny_tokenizer):
    examples = [
        choice_example("Tweet: I love this airline\nSentiment:", ["negative", "positive"], 1),
        choice_example("Question: how many eggs?\nAnswer:", ["12 eggs", "a dozen and one"], 0),
    ]
    collator = DynamicPaddingCollator(tiny_tokenizer)

    def losses(features):
        return eval_losses(tiny_model, features, collator, batch_size=3, device="cpu")

    rows = score_choices(examples, tiny_tokenizer, losses)
    for example, row in zip(examples, rows):
        context = encode_prompt(tiny_tokenizer, example.prompt)
        for choice, found in zip(example.choices, row["loglik"]):
            continuation = tiny_tokenizer(" " + choice, add_special_tokens=False)["input_ids"]
            ids = torch.tensor([context + continuation])
            with torch.no_grad():
                logprobs = torch.log_softmax(tiny_model(input_ids=ids).logits[0].double(), -1)
            expected = sum(
                logprobs[len(context) + k - 1, token].item() for k, token in enumerate(continuation)
            )
            assert found == pytest.approx(expected, abs=1e-4)


@pytest.mark.parametrize(
    "text, number",
    [
        ("9 apples", "9"),
        (" 1,000 dollars and 3 cents", "1000"),
        ("-4.50 degrees", "-4.5"),
        ("18.0", "18"),
        ("about .5 of it", "0.5"),
        ("no number", None),
    ],
)
def test_first_number(text, number):
    assert first_number(text) == number


def test_generated_numbers_stop_at_the_answer_line(tiny_model, tiny_tokenizer):
    examples = [
        NumberExample(context_prompt(f"{a} apples and {b} more.\nAnswer:"), " x", None, str(a + b))
        for a, b in [(2, 3), (10, 20), (7, 7)]
    ]
    rows = generate_numbers(tiny_model, tiny_tokenizer, examples, batch_size=2, device="cpu")
    assert [r["example"] for r in rows] == [0, 1, 2]
    for row, example in zip(rows, examples):
        assert "\n" not in row["generated"]
        assert row["prediction"] == first_number(row["generated"])
        assert row["correct"] == (row["prediction"] == example.number)
    # The same greedy answers one problem at a time: batching and left padding change nothing.
    alone = [
        generate_numbers(tiny_model, tiny_tokenizer, [e], batch_size=1, device="cpu")[0]
        for e in examples
    ]
    assert [r["generated"] for r in alone] == [r["generated"] for r in rows]


def test_a_split_without_task_problems_has_no_task_score(tiny_model, tiny_tokenizer):
    from loraplace.data.formats import Example

    plain = [Example([{"role": "user", "content": "hi"}], "hello", None)]
    found = score_task(
        tiny_model,
        tiny_tokenizer,
        plain,
        DynamicPaddingCollator(tiny_tokenizer),
        loss_pass=eval_losses,
        batch_size=2,
        device="cpu",
    )
    assert found is None


# --- a run on a task --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def piqa_bench(tiny_model_dir):
    return Workbench.load(
        str(tiny_model_dir),
        DataConfig(dataset="piqa", train_examples=16, eval_examples=24, max_length=128),
    )


def test_a_run_on_a_task_records_every_eval_problems_answer(piqa_bench, tmp_path):
    evaluation = EvalSettings(batch_size=8)
    training = TrainingSettings(steps=2, batch_size=4, learning_rate=1e-3, warmup_steps=0)
    lora = LoraSettings(rank=2, alpha=4)
    base = piqa_bench.base_metrics(evaluation, tmp_path / "study", show_progress=False)
    assert 0 <= base["accuracy"] <= 1
    base_rows = [json.loads(x) for x in (tmp_path / "study" / "base_eval_answers.jsonl").open()]
    assert [r["example"] for r in base_rows] == list(range(24))
    assert base["accuracy"] == sum(r["correct"] for r in base_rows) / 24

    plan = piqa_bench.planner.plan({"all": "all"}, 2)[0]
    out = tmp_path / "run"
    result = train_one(
        piqa_bench,
        plan,
        RunKey("all", 0),
        out,
        spec=RunSpec(lora, training, evaluation, training.learning_rate, base=base),
        show_progress=False,
    )
    assert result["status"] == "finished"
    assert result["accuracy_metric"] == "acc" and result["accuracy_examples"] == 24
    assert len(result["correct"]) == len(result["correct_norm"]) == 24
    assert result["accuracy"] == sum(result["correct"]) / 24
    assert result["accuracy_norm"] == sum(result["correct_norm"]) / 24
    assert result["base_accuracy"] == base["accuracy"]
    rows = [json.loads(x) for x in (out / "eval_answers.jsonl").open()]
    assert [r["correct"] for r in rows] == result["correct"]
    for row, example in zip(rows, piqa_bench.eval.examples):
        assert row["label"] == example.label and len(row["loglik"]) == 2
        assert all(math.isfinite(x) and x < 0 for x in row["loglik"])
    # The eval loss is the loss on the correct answers (the completions), as for any data.
    assert math.isfinite(result["eval_loss"])


# --- the context once per problem ------------------------------------------------------------


def _adapted(name: str, tokenizer):
    from peft import LoraConfig, get_peft_model
    from test_gemma3 import tiny_gemma3
    from transformers import AutoModelForCausalLM, LlamaConfig

    torch.manual_seed(0)
    if name == "gemma3":  # a 4-token sliding window, shorter than the contexts
        base = tiny_gemma3(len(tokenizer))
    else:
        config = LlamaConfig(
            vocab_size=len(tokenizer),
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
        )
        base = AutoModelForCausalLM.from_config(config)
    # Random B as well as A, so the adapter changes every score.
    config = LoraConfig(r=2, target_modules=["q_proj", "v_proj", "down_proj"])
    config.init_lora_weights = False
    return get_peft_model(base, config).eval()


MIXED = [
    choice_example(
        "Question: how many eggs does she sell at the market?\nAnswer:",
        ["12", "a dozen and one", "x"],
        0,
    ),
    choice_example("Tweet: ok\nSentiment:", ["negative", "neutral", "positive"], 1),
    choice_example("Q: 2+2 =", ["4", "five hundred and twelve"], 0),
]


@pytest.mark.parametrize("name", ["llama", "gemma3"])
def test_the_context_once_per_problem_gives_the_same_losses(name, tiny_tokenizer):
    from loraplace.training.choices import shared_context_pass

    model = _adapted(name, tiny_tokenizer)
    features = choice_features(MIXED * 3, tiny_tokenizer)
    collator = DynamicPaddingCollator(tiny_tokenizer)
    full = eval_losses(model, features, collator, batch_size=4, device="cpu")
    shared = shared_context_pass(model, features, collator, batch_size=4, device="cpu")
    assert [(r.example, r.tokens) for r in full] == [(e, n) for e, n, _ in shared]
    assert [s for _, _, s in shared] == pytest.approx([r.loss_sum for r in full], abs=1e-4)


def test_the_context_is_shared_where_it_outweighs_the_answers(tiny_model, tiny_tokenizer):
    calls = []

    def counting(*args, **kwargs):
        calls.append(len(args[1]))
        return eval_losses(*args, **kwargs)

    collator = DynamicPaddingCollator(tiny_tokenizer)
    options = dict(loss_pass=counting, batch_size=4, device="cpu")
    short = [
        choice_example(
            "Tweet: a long tweet about " + "flights " * 20 + "\nSentiment:",
            ["negative", "positive"],
            0,
        )
    ]
    long = [choice_example("Q:", ["a long answer " * 10, "another long answer " * 10], 1)]
    score_task(tiny_model, tiny_tokenizer, short, collator, **options)
    assert calls == []  # the shared pass scored the short answers
    score_task(tiny_model, tiny_tokenizer, long, collator, **options)
    assert calls == [2]


def test_scoring_tokens_count_what_the_scoring_pass_runs(tiny_tokenizer):
    from loraplace.training.choices import NUMBER_TOKENS, scoring_tokens

    tweet = choice_example(
        "Tweet: a long tweet about " + "flights " * 20 + "\nSentiment:",
        ["negative", "positive"],
        0,
    )
    context = len(encode_prompt(tiny_tokenizer, tweet.prompt))
    answers = [
        len(tiny_tokenizer(" " + c, add_special_tokens=False)["input_ids"]) for c in tweet.choices
    ]
    # The context outweighs the answers: it runs once, then each answer.
    assert scoring_tokens([tweet], tiny_tokenizer) == context + sum(answers)
    # Long answers: every choice runs with its context.
    long = choice_example("Q:", ["a long answer " * 10, "another long answer " * 10], 1)
    features = choice_features([long], tiny_tokenizer)
    assert scoring_tokens([long], tiny_tokenizer) == sum(len(f["input_ids"]) for f in features)
    number = NumberExample(
        prompt=[{"role": "user", "content": "2+2?"}], completion="4", answer=None, number="4"
    )
    prompt = len(encode_prompt(tiny_tokenizer, number.prompt))
    assert scoring_tokens([number], tiny_tokenizer) == prompt + NUMBER_TOKENS
    assert scoring_tokens([], tiny_tokenizer) == 0
