"""The architecture classifier and compiled plans, checked against PEFT on tiny random models.

One row of :data:`helpers.ARCHS` per decoder family: a tiny config and, written out by hand,
the role of every linear module in a decoder layer. For every row and every strategy of
:data:`STRATEGIES`, the plan's targets, ranks and parameter counts must equal what PEFT builds
and counts on the real model. A new architecture is a new row (in tests/helpers.py).
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from helpers import ARCHS, VOCAB, ArchCase, H, meta_model
from torch import nn

from loraplace.errors import ArchitectureError, StrategyError
from loraplace.models import count_params
from loraplace.placement.arch import classify
from loraplace.placement.grammar import parse_strategy
from loraplace.placement.plan import compile_plan

ARCH_BY_NAME = {case.name: case for case in ARCHS}

#: Strategies valid for every family.
STRATEGIES = ["all", "attn", "mlp", "all@last:1", "attn:r4+mlp@1:r8"]


@pytest.mark.parametrize("case", ARCHS, ids=[c.name for c in ARCHS])
def test_classify(case):
    arch = classify(meta_model(case))
    assert arch.num_layers == case.num_layers
    assert arch.layers_path == case.layers_path
    assert arch.hidden_size == H
    for layer in range(case.num_layers):
        found = {p.local_name: p.roles for p in arch.in_layer(layer)}
        assert found == case.roles, f"layer {layer}"
        for p in arch.in_layer(layer):
            assert p.name == f"{case.layers_path}.{layer}.{p.local_name}"


def _expected_targets(case: ArchCase, strategy: str, rank: int) -> dict[str, int]:
    """Module -> rank, worked out from the hand-written role table (not from the classifier)."""
    expected = {}
    for part in parse_strategy(strategy).parts:
        for layer in part.layers.resolve(case.num_layers):
            for local, roles in case.roles.items():
                if set(roles) & part.roles:
                    expected[f"{case.layers_path}.{layer}.{local}"] = part.rank or rank
    return expected


PEFT_CASES = [(case, s) for case in ARCHS for s in STRATEGIES + list(case.extra_strategies)]


@pytest.mark.parametrize("case, strategy", PEFT_CASES, ids=[f"{c.name}-{s}" for c, s in PEFT_CASES])
def test_plan_matches_peft(case, strategy):
    from peft import get_peft_model

    meta = meta_model(case)
    rank = 2
    plan = compile_plan(strategy, classify(meta), rank, base_params=count_params(meta))
    assert plan.module_ranks == _expected_targets(case, strategy, rank)

    for scaling, expected in (("standard", lambda r: 16 / r), ("rslora", lambda r: 16 / r**0.5)):
        peft_model = get_peft_model(
            case.build("cpu"), plan.lora_config(alpha=16, dropout=0.0, scaling=scaling)
        )
        trainable, total = peft_model.get_nb_trainable_parameters()
        assert trainable == plan.trainable_params
        assert total == plan.total_params
        wrapped = {
            name.removeprefix("base_model.model."): module
            for name, module in peft_model.named_modules()
            if hasattr(module, "lora_A") and "default" in module.lora_A
        }
        assert set(wrapped) == set(plan.targets)
        ranks = {n: m.lora_A["default"].weight.shape[0] for n, m in wrapped.items()}
        assert ranks == plan.module_ranks
        # Each module's scaling follows the convention at its own rank (a part's :rN included).
        scalings = {n: m.scaling["default"] for n, m in wrapped.items()}
        assert scalings == pytest.approx({n: expected(r) for n, r in ranks.items()})


# (architecture, strategy, words the one-line error must contain)
PLAN_ERROR_CASES = [
    ("gpt2", "q", ["'q'", "c_attn", "qkv", "attn"]),
    ("gpt2", "q,v", ["c_attn", "qkv", "attn"]),
    ("phi3", "q", ["'q'", "qkv_proj", "qkv", "attn"]),
    ("falcon", "q", ["'q'", "query_key_value", "qkv", "attn"]),
    ("bloom", "k@0", ["'k'", "query_key_value", "qkv", "attn"]),
    ("gpt_neox", "v", ["query_key_value", "qkv", "attn"]),
    ("phi3", "up", ["'up'", "gate_up_proj", "gate,up", "mlp"]),
    ("phi3", "gate", ["'gate'", "gate_up_proj", "gate,up", "mlp"]),
    ("gpt2", "gate", ["'gate'", "gpt2", "q,k,v,o,up,down"]),
    ("opt", "gate,up", ["'gate'", "opt", "q,k,v,o,up,down"]),
    ("gpt2", "q,k:r4+v:r8", ["c_attn", "different ranks", "[4, 8]"]),
    ("llama", "all@0-5", ["0-5", "3 layers", "0-2"]),
    ("llama", "attn@last:4", ["last:4", "3 layers"]),
    ("llama", "attn+q@0:r4", ["'q'", "layer 0", "two ranks"]),
]


@pytest.mark.parametrize(
    "arch_name, strategy, words", PLAN_ERROR_CASES, ids=[f"{c[0]}-{c[1]}" for c in PLAN_ERROR_CASES]
)
def test_plan_errors(arch_name, strategy, words):
    meta = meta_model(ARCH_BY_NAME[arch_name])
    with pytest.raises(StrategyError) as info:
        compile_plan(strategy, classify(meta), 8, base_params=count_params(meta))
    message = str(info.value)
    assert "\n" not in message
    for word in words:
        assert word in message, f"{message!r} lacks {word!r}"


# --- toy models: unfamiliar names, standard structure -------------------------------------------


class ToyLM(nn.Module):
    """A causal-LM-like module: embeddings, a list of blocks with the given linears, a head."""

    def __init__(self, linears: dict[str, tuple[int, int]], num_layers: int = 3, **config):
        super().__init__()
        self.config = SimpleNamespace(
            model_type="toy",
            hidden_size=H,
            num_hidden_layers=num_layers,
            num_attention_heads=4,
            **config,
        )
        self.embed = nn.Embedding(VOCAB, H)
        self.blocks = nn.ModuleList(self._block(linears) for _ in range(num_layers))
        self.head = nn.Linear(H, VOCAB)

    @staticmethod
    def _block(linears):
        block = nn.Module()
        for path, (n_in, n_out) in linears.items():
            parent = block
            *parents, leaf = path.split(".")
            for piece in parents:
                if not hasattr(parent, piece):
                    parent.add_module(piece, nn.Module())
                parent = getattr(parent, piece)
            parent.add_module(leaf, nn.Linear(n_in, n_out))
        return block


# (case id, block linears name -> (in, out) in definition order, extra config, expected roles)
TOY_CASES = [
    (
        "square-attn",
        {
            "attention.a": (H, H),
            "attention.b": (H, H),
            "attention.c": (H, H),
            "attention.d": (H, H),
            "mlp.x": (H, 96),
            "mlp.y": (96, H),
        },
        dict(intermediate_size=96),
        {
            "attention.a": ("q",),
            "attention.b": ("k",),
            "attention.c": ("v",),
            "attention.d": ("o",),
            "mlp.x": ("up",),
            "mlp.y": ("down",),
        },
    ),
    (
        "gqa-gated",
        {
            "attention.a": (H, H),
            "attention.b": (H, 32),
            "attention.c": (H, 32),
            "attention.d": (H, H),
            "feed_forward.x": (H, 96),
            "feed_forward.z": (H, 96),
            "feed_forward.y": (96, H),
        },
        dict(intermediate_size=96, num_key_value_heads=2),
        {
            "attention.a": ("q",),
            "attention.b": ("k",),
            "attention.c": ("v",),
            "attention.d": ("o",),
            "feed_forward.x": ("gate",),
            "feed_forward.z": ("up",),
            "feed_forward.y": ("down",),
        },
    ),
    (
        "fused",
        {
            "attn.packed": (H, 3 * H),
            "attn.back": (H, H),
            "mlp.both": (H, 2 * 96),
            "mlp.back": (96, H),
        },
        dict(intermediate_size=96),
        {
            "attn.packed": ("q", "k", "v"),
            "attn.back": ("o",),
            "mlp.both": ("gate", "up"),
            "mlp.back": ("down",),
        },
    ),
    (
        "no-block-names",
        {"wide": (H, 4 * H), "narrow": (4 * H, H)},
        {},
        {"wide": ("up",), "narrow": ("down",)},
    ),
]


@pytest.mark.parametrize(
    "linears, config, expected", [c[1:] for c in TOY_CASES], ids=[c[0] for c in TOY_CASES]
)
def test_structural_fallback(linears, config, expected):
    arch = classify(ToyLM(linears, **config))
    assert arch.num_layers == 3 and arch.layers_path == "blocks"
    for layer in range(3):
        assert {p.local_name: p.roles for p in arch.in_layer(layer)} == expected
    all_roles = {r for roles in expected.values() for r in roles}
    plan = compile_plan("all", arch, 4, base_params=count_params(ToyLM(linears, **config)))
    assert plan.trainable_params == 3 * sum(4 * (i + o) for i, o in linears.values())
    assert set().union(*plan.placement.values()) == all_roles


def test_unclassifiable_module_lists_linears():
    with pytest.raises(ArchitectureError) as info:
        classify(
            ToyLM(
                {"attention.a": (H, 3 * H), "attention.d": (H, H), "foo": (H, 17), "bar": (17, H)}
            )
        )
    message = str(info.value)
    assert "\n" not in message
    for piece in ("foo 64->17", "bar 17->64", "attention.a 64->192", "attention.d 64->64"):
        assert piece in message


def test_model_without_layer_list_lists_linears():
    class Flat(nn.Module):
        def __init__(self):
            super().__init__()
            self.config = SimpleNamespace(model_type="flat", hidden_size=H)
            self.proj_in = nn.Linear(H, H)
            self.proj_out = nn.Linear(H, VOCAB)

    with pytest.raises(ArchitectureError) as info:
        classify(Flat())
    message = str(info.value)
    assert "\n" not in message
    assert "proj_in" in message and "proj_out" in message


def test_strategy_matching_no_module():
    arch = classify(ToyLM({"attention.a": (H, 3 * H), "attention.d": (H, H)}))
    with pytest.raises(StrategyError, match="matches no module") as info:
        compile_plan("mlp", arch, 8, base_params=0)
    assert "q,k,v,o" in str(info.value)
