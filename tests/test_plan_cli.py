"""``loraplace inspect`` and ``loraplace plan`` on config-only model directories.

See the README, "Commands".

Planning builds models on the ``meta`` device, so full-size configs (GPT-2 small, LLaMA-7B)
cost no memory; the expected counts below are the well-known public figures.
"""

from __future__ import annotations

import json

import pytest
from transformers import GPT2Config, LlamaConfig

from loraplace.cli.main import main

# Per-layer LoRA parameters at rank 1, r * (in + out) summed over a group's modules, worked out
# by hand from the published shapes (GPT-2 small: 768 wide, fused c_attn 768->2304, MLP 3072).
GPT2_UNIT = {"attn": (768 + 2304) + (768 + 768), "mlp": (768 + 3072) + (3072 + 768)}
GPT2_UNIT["all"] = GPT2_UNIT["attn"] + GPT2_UNIT["mlp"]
GPT2_LAYERS = 12


@pytest.fixture(scope="module")
def model_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    GPT2Config().save_pretrained(root / "gpt2")
    LlamaConfig().save_pretrained(root / "llama7b")
    (root / "empty").mkdir()
    (root / "empty" / "README.md").write_text("no config here\n")
    return root


def run_cli(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def plan_json(capsys, *argv) -> dict:
    code, out, err = run_cli(capsys, "plan", *argv, "--json")
    assert code == 0, err
    return json.loads(out)


# LLaMA-7B: 32 layers, hidden 4096, intermediate 11008. A rank-r LoRA on a (d_in, d_out)
# linear has r * (d_in + d_out) parameters: four 4096 x 4096 attention projections and three
# 4096 <-> 11008 feed-forward ones per layer.
LLAMA_LAYERS, LLAMA_ATTN, LLAMA_FFN = 32, 4096 + 4096, 4096 + 11008

# (model directory, strategy, rank, trainable parameters)
COUNT_CASES = [
    ("gpt2", "qkv", 8, 8 * GPT2_LAYERS * (768 + 2304)),  # c_attn: one fused 768 -> 2304
    ("gpt2", "attn", 8, 8 * GPT2_LAYERS * GPT2_UNIT["attn"]),
    ("gpt2", "all@last:4", 2, 2 * 4 * GPT2_UNIT["all"]),
    ("llama7b", "all", 64, 64 * LLAMA_LAYERS * (4 * LLAMA_ATTN + 3 * LLAMA_FFN)),  # 159,907,840
    ("llama7b", "q,v", 8, 8 * LLAMA_LAYERS * 2 * LLAMA_ATTN),  # 4,194,304
    ("llama7b", "baseline", 64, 64 * LLAMA_LAYERS * (4 * LLAMA_ATTN + 3 * LLAMA_FFN)),
]


@pytest.mark.parametrize(
    "model, strategy, rank, trainable",
    COUNT_CASES,
    ids=[f"{c[0]}-{c[1]}-r{c[2]}" for c in COUNT_CASES],
)
def test_plan_counts(capsys, model_dirs, model, strategy, rank, trainable):
    result = plan_json(
        capsys, "--model", model_dirs / model, "--strategy", strategy, "--rank", rank
    )
    (entry,) = result["strategies"]
    assert entry["trainable_params"] == trainable


def test_plan_json_contract(capsys, model_dirs):
    model = str(model_dirs / "llama7b")
    result = plan_json(
        capsys,
        "--model",
        model,
        "--strategy",
        "q,v",
        "--strategy",
        "late=mlp@last:8:r16",
        "--strategy",
        "attention-only",
    )
    assert set(result) >= {"model", "total_params", "strategies"}
    assert result["model"] == model
    assert isinstance(result["total_params"], int)
    # LLaMA-7B has about 6.74 billion parameters.
    assert 6_700_000_000 < result["total_params"] < 6_800_000_000
    assert [s["name"] for s in result["strategies"]] == ["q,v", "late", "attention-only"]
    assert [s["spec"] for s in result["strategies"]] == ["q,v", "mlp@last:8:r16", "attn"]
    for entry in result["strategies"]:
        assert set(entry) >= {
            "name",
            "spec",
            "trainable_params",
            "trainable_pct",
            "total_params",
            "ranks",
            "targets",
        }
        assert isinstance(entry["trainable_params"], int)
        assert isinstance(entry["ranks"], dict) and entry["ranks"]
        total = entry["total_params"]
        assert total == result["total_params"] + entry["trainable_params"]
        assert entry["trainable_pct"] == pytest.approx(
            100 * entry["trainable_params"] / total, rel=1e-12
        )
        assert len(entry["targets"]) == len(set(entry["targets"]))
        assert all(t.startswith("model.layers.") for t in entry["targets"])
    qv, late, attn = result["strategies"]
    assert sorted(qv["targets"]) == sorted(
        f"model.layers.{i}.self_attn.{m}_proj" for i in range(32) for m in "qv"
    )
    assert qv["ranks"] == {"q,v": 8}
    assert late["ranks"] == {"mlp@last:8": 16}
    assert sorted(late["targets"]) == sorted(
        f"model.layers.{i}.mlp.{m}_proj" for i in range(24, 32) for m in ("gate", "up", "down")
    )
    assert late["trainable_params"] == 16 * 8 * (2 * (4096 + 11008) + (11008 + 4096))
    assert len(attn["targets"]) == 4 * 32


def _best_gap(unit: int, budget: int) -> int:
    """The smallest |r * unit - budget| over every positive integer rank r."""
    return min(abs(r * unit - budget) for r in range(1, budget // unit + 3))


# (--match-params value, the budget it means, strategies: spec -> rank-1 count from the shapes)
MATCH_STRATEGIES = {
    "baseline": GPT2_LAYERS * GPT2_UNIT["all"],
    "attention-only": GPT2_LAYERS * GPT2_UNIT["attn"],
    "ffn-only": GPT2_LAYERS * GPT2_UNIT["mlp"],
    "all@last:4": 4 * GPT2_UNIT["all"],
    "mlp@every:3:1": 4 * GPT2_UNIT["mlp"],
}
MATCH_CASES = [
    ("attention-only", 8 * GPT2_LAYERS * GPT2_UNIT["attn"]),
    ("1000000", 1_000_000),
    ("12345", 12_345),
]


def test_match_params_gives_attention_and_mlp_a_rank_each_where_one_rank_misses(capsys, tmp_path):
    # hidden 64, 4 heads of 16, 2 KV heads, MLP 128: a rank-1 layer adapts 448 attention and
    # 576 MLP parameters (q, o: 64+64; k, v: 64+32; gate, up, down: 64+128), 1,024 in all.
    LlamaConfig(
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=128,
    ).save_pretrained(tmp_path / "llama")
    argv = ["--model", tmp_path / "llama", "--rank", 8, "--match-params", "attn"]
    result = plan_json(capsys, *argv, "--strategy", "all", "--strategy", "attn")
    budget = 2 * 8 * 448  # attn r8: 7,168
    matched, reference = result["strategies"]
    assert reference["trainable_params"] == budget
    # One rank misses by 14% (r3: 6,144; r4: 8,192). Of the attention/MLP pairs, (4, 3) and
    # (3, 4) both miss by 128 (1.8%); the smaller count wins the tie.
    assert matched["spec"] == "attn:r4+mlp:r3"
    assert matched["trainable_params"] == 2 * (4 * 448 + 3 * 576) == budget - 128
    assert matched["matched_to"] == budget
    code, out, _ = run_cli(capsys, "plan", *argv, "--strategy", "all", "--strategy", "attn")
    assert code == 0 and "attn:r4+mlp:r3 -> 7,040 (-1.79%)" in out
    # Within the tolerance, one rank is kept.
    loose = plan_json(capsys, *argv, "--strategy", "all", "--match-tolerance", "0.2")
    assert loose["strategies"][0]["spec"] == "all"


@pytest.mark.parametrize("budget_arg, budget", MATCH_CASES, ids=[c[0] for c in MATCH_CASES])
def test_match_params(capsys, model_dirs, budget_arg, budget):
    # One global rank per strategy, however far it lands (per-part ranks: the test below).
    argv = ["--model", model_dirs / "gpt2", "--rank", 8, "--match-params", budget_arg]
    argv += ["--match-tolerance", "1e9"]
    for spec in MATCH_STRATEGIES:
        argv += ["--strategy", spec]
    result = plan_json(capsys, *argv)
    assert [s["name"] for s in result["strategies"]] == list(MATCH_STRATEGIES)
    for entry in result["strategies"]:
        unit = MATCH_STRATEGIES[entry["name"]]
        (rank,) = set(entry["ranks"].values())
        assert entry["trainable_params"] == rank * unit
        assert abs(entry["trainable_params"] - budget) == _best_gap(unit, budget), entry
    # The reference strategy itself keeps its rank.
    if budget_arg == "attention-only":
        assert result["strategies"][1]["ranks"] == {"attn": 8}

    code, out, _ = run_cli(capsys, "plan", *argv)
    assert code == 0
    assert f"{budget:,}" in out


def test_plan_table(capsys, model_dirs):
    code, out, err = run_cli(
        capsys,
        "plan",
        "--model",
        model_dirs / "gpt2",
        "--strategy",
        "qkv",
        "--strategy",
        "mlp@last:2",
        "--rank",
        8,
    )
    assert code == 0, err
    assert "294,912" in out
    assert f"{8 * 2 * GPT2_UNIT['mlp']:,}" in out
    assert "gpt2" in out and "12 layers" in out


# (model directory, what inspect must print)
INSPECT_CASES = [
    (
        "gpt2",
        [
            "12 layers",
            "transformer.h",
            "attn.c_attn",
            "q,k,v",
            "fused",
            "768 -> 2304",
            "Conv1D",
            "attn.c_proj",
            "mlp.c_fc",
            "mlp.c_proj",
            "up",
            "down",
        ],
    ),
    (
        "llama7b",
        [
            "32 layers",
            "model.layers",
            "self_attn.q_proj",
            "self_attn.k_proj",
            "self_attn.v_proj",
            "self_attn.o_proj",
            "mlp.gate_proj",
            "mlp.up_proj",
            "mlp.down_proj",
            "4096 -> 11008",
            "gate",
            "down",
        ],
    ),
]


@pytest.mark.parametrize("model, pieces", INSPECT_CASES, ids=[c[0] for c in INSPECT_CASES])
def test_inspect(capsys, model_dirs, model, pieces):
    code, out, err = run_cli(capsys, "inspect", "--model", model_dirs / model)
    assert code == 0, err
    for piece in pieces:
        assert piece in out, piece


# (argv with {gpt2}/{missing}/{empty} placeholders, words the error must contain)
ERROR_CASES = [
    (["plan", "--model", "{gpt2}", "--strategy", "attn,foo"], ["'foo'", "valid groups"]),
    (["plan", "--model", "{gpt2}", "--strategy", "all@10-12"], ["10-12", "12 layers", "0-11"]),
    (["plan", "--model", "{gpt2}", "--strategy", "all@last:13"], ["last:13", "12 layers"]),
    (["plan", "--model", "{gpt2}", "--strategy", "q"], ["c_attn", "qkv", "attn"]),
    (["plan", "--model", "{gpt2}", "--strategy", "gate"], ["'gate'", "gpt2"]),
    (
        ["plan", "--model", "{gpt2}", "--strategy", "mlp:r4", "--match-params", "1000"],
        ["mlp:r4", ":rN"],
    ),
    (
        ["plan", "--model", "{gpt2}", "--strategy", "mlp", "--match-params", "nonsense"],
        ["nonsense"],
    ),
    (["plan", "--model", "{missing}", "--strategy", "all"], ["{missing}", "not found"]),
    (["inspect", "--model", "{missing}"], ["{missing}", "not found"]),
    (["plan", "--model", "{empty}", "--strategy", "all"], ["{empty}", "config.json", "README.md"]),
    (["inspect", "--model", "{empty}"], ["{empty}", "config.json"]),
]


@pytest.mark.parametrize(
    "argv, words", ERROR_CASES, ids=[" ".join(c[0][:1] + c[0][3:]) for c in ERROR_CASES]
)
def test_errors(capsys, model_dirs, argv, words):
    paths = {
        "gpt2": model_dirs / "gpt2",
        "missing": model_dirs / "no-such-model",
        "empty": model_dirs / "empty",
    }
    code, out, err = run_cli(capsys, *(a.format(**paths) for a in argv))
    assert code == 2
    assert out == ""
    assert err.startswith("loraplace: error: ")
    assert err.count("\n") == 1 and err.endswith("\n")
    assert "Traceback" not in err
    for word in words:
        word = word.format(**paths)
        assert word in err, f"{err!r} lacks {word!r}"
