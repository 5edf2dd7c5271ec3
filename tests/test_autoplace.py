"""Automatic placement: scores, the exact knapsack, the random control and rendering.

Tiny random models only. Golden values come from independent sources: brute-force enumeration
for the knapsack, PEFT's own parameter count, Monte-Carlo random matrices for the
Marchenko–Pastur median, and hand-built weights whose expected ranking is unambiguous.
"""

from __future__ import annotations

import copy
import csv
import itertools
import json
import math
import random

import numpy as np
import pytest
import torch
from helpers import ARCHS, meta_model
from scipy import stats
from transformers import AutoModelForCausalLM, GPT2Config, LlamaConfig

from loraplace.autoplace import choose as ap
from loraplace.errors import StrategyError
from loraplace.models import count_params
from loraplace.placement.arch import classify
from loraplace.placement.grammar import parse_strategy
from loraplace.placement.plan import compile_plan

LAYERS = 4


def tiny_llama(layers: int = LAYERS, seed: int = 0):
    config = LlamaConfig(
        vocab_size=96,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
        pad_token_id=0,
    )
    torch.manual_seed(seed)
    return AutoModelForCausalLM.from_config(config).eval()


def tiny_gpt2(seed: int = 0):
    torch.manual_seed(seed)
    config = GPT2Config(n_embd=32, n_layer=3, n_head=4, vocab_size=96, n_positions=64)
    return AutoModelForCausalLM.from_config(config).eval()


@pytest.fixture(scope="module")
def llama():
    model = tiny_llama()
    return model, classify(model)


def seeded_scores(arch, seed: int) -> dict[str, float]:
    rng = random.Random(seed)
    return {unit.module: rng.random() for unit in ap.units_of(arch)}


def peft_count(model, strategy: str, arch, rank: int) -> tuple[int, int]:
    """(PEFT's trainable count, compile_plan's count) for ``strategy`` on a copy of ``model``."""
    from peft import get_peft_model

    plan = compile_plan(strategy, arch, rank, base_params=count_params(model))
    wrapped = get_peft_model(copy.deepcopy(model), plan.lora_config(alpha=16, dropout=0.0))
    return wrapped.get_nb_trainable_parameters()[0], plan.trainable_params


# --- units and budgets --------------------------------------------------------------------------


def test_units_cost_what_the_planner_counts(llama):
    _, arch = llama
    units = ap.units_of(arch)
    assert len(units) == 7 * LAYERS
    all_params = compile_plan("all", arch, 8, base_params=0).trainable_params
    assert sum(unit.cost(8) for unit in units) == all_params


@pytest.mark.parametrize("fraction", [0.15, 0.2, 0.37, 0.5, 0.8, 0.99])
@pytest.mark.parametrize("ranks", [None, (2, 4, 8)], ids=["one-rank", "ranks-2-4-8"])
def test_place_respects_budget_and_counts_match_peft(llama, fraction, ranks):
    model, arch = llama
    budget = int(fraction * compile_plan("all", arch, 4, base_params=0).trainable_params)
    placement = ap.place(arch, seeded_scores(arch, 1), budget, method="test", rank=4, ranks=ranks)
    assert 0.95 * budget <= placement.trainable_params <= budget
    assert placement.fill == placement.trainable_params / budget
    plan = compile_plan(parse_strategy(placement.strategy), arch, 4, base_params=0)
    assert plan.module_ranks == placement.chosen
    trainable, planned = peft_count(model, placement.strategy, arch, 4)
    assert trainable == planned == placement.trainable_params
    json.dumps(placement.to_json())


def test_budget_that_cannot_be_met(llama):
    _, arch = llama
    scores = seeded_scores(arch, 0)
    cheapest = min(unit.cost(8) for unit in ap.units_of(arch))
    everything = compile_plan("all", arch, 8, base_params=0).trainable_params
    with pytest.raises(StrategyError, match="below the cheapest module"):
        ap.place(arch, scores, cheapest - 1, method="t")
    with pytest.raises(StrategyError, match=f"cannot be reached.*{everything:,}"):
        ap.place(arch, scores, 2 * everything, method="t")
    # Everything fits (at it, or just above it, within 5%): ranking would take every module,
    # so there is no placement to choose, and the random control would be all but a few.
    for budget in (everything, everything + 100):
        with pytest.raises(StrategyError, match=f"leaves nothing to choose.*{everything:,}"):
            ap.place(arch, scores, budget, method="t")
        with pytest.raises(StrategyError, match="leaves nothing to choose"):
            ap.random_selection(ap.units_of(arch), budget, seed=0)
    # One parameter less, and a module must be left out: that is a choice.
    assert ap.place(arch, scores, everything - 1, method="t").strategy != "all"
    # Several ranks: everything at the lowest rank fits, but not at the highest, so rank is chosen.
    low_everything = compile_plan("all", arch, 2, base_params=0).trainable_params
    mixed = ap.place(arch, scores, low_everything, method="t", rank=2, ranks=(2, 8))
    assert set(mixed.chosen.values()) == {2, 8}
    with pytest.raises(StrategyError, match="positive integer"):
        ap.place(arch, scores, 0, method="t")
    with pytest.raises(StrategyError, match="no finite score"):
        ap.place(arch, dict(list(scores.items())[1:]), everything // 2, method="t")


def test_budget_window_with_no_combination():
    # Costs 100 and 100: nothing lies in [143, 150].
    units = [ap.Unit(f"m{i}", i, ("q",), 60, 40) for i in range(2)]
    with pytest.raises(StrategyError, match="between 143 and 150.*closest below costs 100"):
        ap.select(units, {"m0": 1.0, "m1": 1.0}, 150, rank=1)
    with pytest.raises(StrategyError, match="closest below costs 100"):
        ap.random_selection(units, 150, seed=0, rank=1)


# --- the knapsack against brute force ---------------------------------------------------------


def brute_force(units, scores, budget, ranks, tolerance=0.05):
    """Best total value over every assignment (left out or one rank per unit) in the window.

    None where no assignment lies in the window, or where everything at the highest rank fits
    (nothing to choose, which ``select`` refuses).
    """
    if sum(u.cost(max(ranks)) for u in units) <= budget:
        return None
    low = budget - math.floor(budget * tolerance)
    best = None
    for assignment in itertools.product([0, *ranks], repeat=len(units)):
        cost = sum(u.cost(r) for u, r in zip(units, assignment) if r)
        if low <= cost <= budget:
            value = sum(
                scores[u.module] * math.sqrt(r / min(ranks)) for u, r in zip(units, assignment) if r
            )
            best = value if best is None else max(best, value)
    return best


def random_instance(rng: random.Random, n: int):
    units = [
        ap.Unit(f"m{i}", i, ("q",), rng.choice([2, 3, 4, 6]), rng.choice([2, 4, 5, 8]))
        for i in range(n)
    ]
    scores = {u.module: rng.choice([0.0, rng.random(), rng.random() * 10]) for u in units}
    return units, scores


@pytest.mark.parametrize("ranks", [(1,), (1, 2, 4)], ids=["one-rank", "three-ranks"])
def test_knapsack_matches_brute_force(ranks):
    rng = random.Random(7)
    checked = 0
    for _ in range(150):
        units, scores = random_instance(rng, rng.randint(1, 9 if len(ranks) == 1 else 5))
        total = sum(u.cost(max(ranks)) for u in units)
        budget = rng.randint(1, total + 5)
        expected = brute_force(units, scores, budget, ranks)
        try:
            selection = ap.select(units, scores, budget, rank=ranks[0], ranks=ranks)
        except StrategyError:
            assert expected is None
            continue
        assert expected is not None
        assert selection.score == pytest.approx(expected, rel=1e-12, abs=1e-12)
        assert budget - math.floor(0.05 * budget) <= selection.cost <= budget
        by_name = {u.module: u for u in units}
        assert selection.cost == sum(by_name[m].cost(r) for m, r in selection.chosen.items())
        value = sum(scores[m] * math.sqrt(r / min(ranks)) for m, r in selection.chosen.items())
        assert selection.score == pytest.approx(value)
        checked += 1
    assert checked >= 60


def test_ties_prefer_the_fuller_budget():
    # Costs 30, 50 and 70; in [50, 100] the fullest is a + c at exactly 100.
    units = [
        ap.Unit("a", 0, ("q",), 20, 10),
        ap.Unit("b", 1, ("q",), 30, 20),
        ap.Unit("c", 2, ("q",), 40, 30),
    ]
    selection = ap.select(units, {"a": 0.0, "b": 0.0, "c": 0.0}, 100, rank=1, tolerance=0.5)
    assert selection.chosen == {"a": 1, "c": 1} and selection.cost == 100


# --- rendering ---------------------------------------------------------------------------------


def modules(arch, roles: str, layers) -> dict[str, int]:
    wanted = set(roles.split(","))
    return {p.name: 8 for p in arch.projections if p.layer in layers and set(p.roles) & wanted}


# (chosen roles and layers per rank on a 4-layer LLaMA, the expected string at global rank 8)
RENDER_CASES = [
    ([("q,k,v,o,gate,up,down", range(4), 8)], "all"),
    ([("q,k,v,o", range(4), 8)], "attn"),
    ([("q,k,v", range(4), 8)], "qkv"),
    ([("gate,up,down", [3], 8)], "mlp@3"),
    ([("q,v", [0, 1, 2], 8), ("gate,up,down", [3], 8)], "q,v@0-2+mlp@3"),
    ([("q,k,v,o,gate,up,down", [0, 2], 8)], "all@0,2"),
    ([("q,v", range(4), 8), ("o", [1, 2, 3], 8)], "q,v+o@1-3"),
    ([("gate,up,down", range(4), 8), ("q,k,v,o", range(4), 16)], "mlp+attn:r16"),
    ([("k,down", [1], 4)], "k,down@1:r4"),
]


@pytest.mark.parametrize("pieces, expected", RENDER_CASES, ids=[c[1] for c in RENDER_CASES])
def test_render_reads_well(llama, pieces, expected):
    _, arch = llama
    chosen = {}
    for roles, layers, rank in pieces:
        chosen.update(dict.fromkeys(modules(arch, roles, layers), rank))
    assert ap.render_strategy(chosen, arch, 8) == expected


def test_render_uses_every_selector():
    arch = classify(tiny_llama(layers=12))
    chosen = modules(arch, "gate,up,down", [1, 3, 5, 7, 9, 11])
    assert ap.render_strategy(chosen, arch, 8) == "mlp@every:2:1"
    chosen = modules(arch, "gate,up,down", [0, 4, 8])
    assert ap.render_strategy(chosen, arch, 8) == "mlp@0,4,8"  # shorter than every:4
    chosen = modules(arch, "q,v", [0, 1, 2, 3, 6])
    assert ap.render_strategy(list(chosen), arch, 8) == "q,v@0-3,6"


@pytest.mark.parametrize("case", ARCHS, ids=[c.name for c in ARCHS])
def test_render_round_trips_on_every_family(case):
    """Random module subsets with random ranks compile back to exactly themselves."""
    arch = classify(meta_model(case))
    rng = random.Random(case.name)
    units = ap.units_of(arch)
    for _ in range(40):
        picked = rng.sample(units, rng.randint(1, len(units)))
        chosen = {u.module: rng.choice([4, 8, 8, 16]) for u in picked}
        text = ap.render_strategy(chosen, arch, 8)
        assert compile_plan(text, arch, 8, base_params=0).module_ranks == {
            u.module: chosen[u.module] for u in units if u.module in chosen
        }


def test_render_refuses_unknown_modules(llama):
    _, arch = llama
    with pytest.raises(StrategyError, match="nope"):
        ap.render_strategy({"nope": 8}, arch, 8)
    with pytest.raises(StrategyError, match="no module"):
        ap.render_strategy({}, arch, 8)


def test_fused_gpt2_attention_is_one_unit():
    model = tiny_gpt2()
    arch = classify(model)
    units = [u for u in ap.units_of(arch) if u.layer == 0]
    assert [u.roles for u in units] == [("q", "k", "v"), ("o",), ("up",), ("down",)]
    # Scores that want only the fused attention input projection of every layer.
    scores = {u.module: 1.0 if "c_attn" in u.module else 0.0 for u in ap.units_of(arch)}
    budget = sum(u.cost(8) for u in ap.units_of(arch) if "c_attn" in u.module)
    placement = ap.place(arch, scores, budget, method="test")
    assert placement.strategy == "qkv"
    trainable, planned = peft_count(model, placement.strategy, arch, 8)
    assert trainable == planned == placement.trainable_params == budget
    for seed in range(5):
        control = ap.place_random(arch, budget, seed)
        for part in parse_strategy(control.strategy).parts:
            assert not {"q", "k", "v"} & part.roles or {"q", "k", "v"} <= part.roles


# --- snr ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(300, 300), (150, 600)], ids=["square", "beta-0.25"])
def test_mp_median_matches_monte_carlo(shape):
    m, n = shape
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(m, n, generator=gen, dtype=torch.float64)
    eigenvalues = torch.linalg.eigvalsh(x @ x.T / n)
    assert ap.mp_median(m / n) == pytest.approx(float(eigenvalues.median()), rel=0.02)


def test_signal_fraction_separates_noise_from_structure():
    gen = torch.Generator().manual_seed(0)
    noise = 0.02 * torch.randn(128, 384, generator=gen)
    spikes = torch.randn(128, 3, generator=gen) @ torch.randn(3, 384, generator=gen) * 0.05
    assert ap.spectral_signal_fraction(noise) < 0.05
    assert ap.spectral_signal_fraction(noise + spikes) > 0.8
    # Transposing (a Conv1D weight) changes no singular value.
    assert ap.spectral_signal_fraction((noise + spikes).T) == pytest.approx(
        ap.spectral_signal_fraction(noise + spikes)
    )
    # A flat spectrum has no spike above the bulk, however structured the matrix is.
    assert ap.spectral_signal_fraction(torch.eye(64)) == 0.0


def make_low_rank(linear_weight: torch.Tensor, seed: int) -> None:
    """Overwrite a weight with a strong rank-2 matrix plus the initialisation's noise level."""
    gen = torch.Generator().manual_seed(seed)
    rows, cols = linear_weight.shape
    low = torch.randn(rows, 2, generator=gen) @ torch.randn(2, cols, generator=gen) * 0.1
    with torch.no_grad():
        linear_weight.copy_(low + 0.02 * torch.randn(rows, cols, generator=gen))


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_snr_ranks_the_structured_layer_first(family):
    model = tiny_llama() if family == "llama" else tiny_gpt2()
    arch = classify(model)
    structured = 1
    for i, unit in enumerate(ap.units_of(arch)):
        if unit.layer == structured:
            make_low_rank(model.get_submodule(unit.module).weight, seed=i)
    scores = ap.snr_scores(model, arch)
    assert set(scores) == {u.module for u in ap.units_of(arch)}
    high = [s for m, s in scores.items() if f".{structured}." in m]
    low = [s for m, s in scores.items() if f".{structured}." not in m]
    assert min(high) > 0.8 and max(low) < 0.5 and min(high) > max(low)
    budget = sum(u.cost(8) for u in ap.units_of(arch) if u.layer == structured)
    assert ap.place(arch, scores, budget, method="snr").strategy == f"all@{structured}"


def test_snr_refuses_meta_weights():
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(tiny_llama().config)
    with pytest.raises(ValueError, match="meta"):
        ap.snr_scores(model, classify(model))


# --- grad: contribution and sensitivity on a LoRA probe -----------------------------------------


def lora_probe(model, arch, *, layer_with_update: int, rank: int = 2):
    """All-linear LoRA with every B zero except in one layer, where B is set by hand."""
    from peft import get_peft_model

    plan = compile_plan("all", arch, rank, base_params=count_params(model))
    probe = get_peft_model(copy.deepcopy(model), plan.lora_config(alpha=4, dropout=0.0))
    gen = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for name, module in probe.named_modules():
            if hasattr(module, "lora_B") and "default" in module.lora_B:
                weight = module.lora_B["default"].weight
                hit = f"layers.{layer_with_update}." in name
                weight.copy_(torch.randn(weight.shape, generator=gen) if hit else 0 * weight)
    return probe


def padded_batch(rows: list[list[int]]) -> dict[str, torch.Tensor]:
    width = max(len(r) for r in rows)
    ids = torch.zeros((len(rows), width), dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, row in enumerate(rows):
        ids[i, : len(row)] = torch.tensor(row)
        mask[i, : len(row)] = 1
    labels = torch.where(mask.bool(), ids, torch.full_like(ids, -100))
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


ROWS = [[5, 9, 13, 2, 40, 41, 7, 8], [3, 4, 5], [60, 61, 62, 63, 11]]


def test_contribution_finds_the_only_layer_that_changes_anything(llama):
    model, arch = llama
    probe = lora_probe(model, arch, layer_with_update=2)
    probe.train()
    scores = ap.contribution_scores(probe, arch, [padded_batch(ROWS)])
    assert set(scores) == {u.module for u in ap.units_of(arch)}
    for name, score in scores.items():
        assert (score > 0) == (".layers.2." in name), name
    budget = sum(u.cost(8) for u in ap.units_of(arch) if u.layer == 2)
    assert ap.place(arch, scores, budget, method="grad").strategy == "all@2"
    assert probe.training and all(p.grad is None for p in probe.parameters())


def test_contribution_is_the_mean_update_norm_over_real_tokens(llama):
    """Checked against ΔW = scaling · B A applied to each module's captured input."""
    model, arch = llama
    probe = lora_probe(model, arch, layer_with_update=1)
    target = "model.layers.1.mlp.down_proj"
    layer = probe.get_submodule(f"base_model.model.{target}")
    delta = layer.scaling["default"] * (
        layer.lora_B["default"].weight @ layer.lora_A["default"].weight
    )
    inputs = []
    handle = layer.register_forward_hook(lambda m, args, out: inputs.append(args[0].detach()))
    batch = padded_batch(ROWS)
    with torch.no_grad():
        probe(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
    handle.remove()
    norms = (inputs[0] @ delta.T).norm(dim=-1)[batch["attention_mask"].bool()]
    scores = ap.contribution_scores(probe, arch, [batch])
    assert scores[target] == pytest.approx(float(norms.mean().detach()), rel=1e-5)
    # Padding never counts: the same rows one by one give the same token mean.
    alone = ap.contribution_scores(probe, arch, [padded_batch([row]) for row in ROWS])
    assert alone[target] == pytest.approx(scores[target], rel=1e-5)


def test_gradient_sensitivity_is_zero_where_nothing_was_learned(llama):
    model, arch = llama
    probe = lora_probe(model, arch, layer_with_update=3)
    flags = {name: p.requires_grad for name, p in probe.named_parameters()}
    scores = ap.gradient_sensitivity(probe, arch, [padded_batch(ROWS)])
    assert set(scores) == {u.module for u in ap.units_of(arch)}
    assert any(".layers.3." in name for name in scores)
    for name, score in scores.items():
        assert (score > 0) == (".layers.3." in name), name
    assert {name: p.requires_grad for name, p in probe.named_parameters()} == flags
    assert all(p.grad is None for p in probe.parameters())
    again = ap.gradient_sensitivity(probe, arch, [padded_batch(ROWS)])
    assert again == scores


def test_probe_without_lora_is_refused(llama):
    model, arch = llama
    with pytest.raises(ValueError, match="no LoRA layer"):
        ap.contribution_scores(model, arch, [padded_batch(ROWS)])


# --- determinism and the random control ----------------------------------------------------------


def test_same_scores_same_strategy(llama):
    _, arch = llama
    budget = compile_plan("attn", arch, 8, base_params=0).trainable_params
    first = ap.place(arch, seeded_scores(arch, 5), budget, method="t")
    assert ap.place(arch, seeded_scores(arch, 5), budget, method="t") == first


def test_random_control_is_seeded_and_varies(llama):
    _, arch = llama
    budget = compile_plan("attn", arch, 8, base_params=0).trainable_params
    placements = [ap.place_random(arch, budget, seed) for seed in range(6)]
    assert ap.place_random(arch, budget, 3) == placements[3]
    assert len({p.strategy for p in placements}) >= 5
    for p in placements:
        assert 0.95 * budget <= p.trainable_params <= budget and p.method == "random"


def test_random_control_is_uniform_over_the_window():
    """Every selection in the budget window is equally likely (chi-square over fixed seeds)."""
    units = [
        ap.Unit(f"m{i}", i, ("q",), a, b)
        for i, (a, b) in enumerate([(3, 3), (2, 2), (2, 3), (4, 4), (1, 2), (3, 4)])
    ]
    budget = 20
    feasible = [
        frozenset(u.module for u, take in zip(units, mask) if take)
        for mask in itertools.product([0, 1], repeat=len(units))
        if budget - math.floor(0.05 * budget)
        <= sum(u.cost(1) for u, t in zip(units, mask) if t)
        <= budget
    ]
    assert len(feasible) == 6  # costing 19 or 20
    draws = [
        frozenset(ap.random_selection(units, budget, seed, rank=1).chosen) for seed in range(2000)
    ]
    assert set(draws) == set(feasible)
    counts = [draws.count(s) for s in feasible]
    assert stats.chisquare(counts).pvalue > 0.001


# --- importance files --------------------------------------------------------------------------


def test_write_importance(tmp_path):
    model = tiny_gpt2()
    arch = classify(model)
    scores = {u.module: float(i) for i, u in enumerate(ap.units_of(arch))}
    chosen = {p.name: 8 for p in arch.projections if p.layer == 2}
    csv_path, png_path = ap.write_importance(tmp_path, arch, scores, chosen)
    with open(csv_path) as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == sum(len(p.roles) for p in arch.projections)
    fused = [r for r in rows if r["module"] == "transformer.h.0.attn.c_attn"]
    assert [r["role"] for r in fused] == ["q", "k", "v"]
    assert len({r["score"] for r in fused}) == 1
    assert float(fused[0]["score"]) == scores["transformer.h.0.attn.c_attn"]
    assert {r["module"] for r in rows if r["chosen"] == "1"} == set(chosen)
    assert all(r["rank"] == ("8" if r["chosen"] == "1" else "") for r in rows)
    image = plt_imread(png_path)
    assert image.ndim == 3 and image.shape[0] > 100
    # The random control has no scores: empty score cells, a map of the chosen cells.
    csv_path, _ = ap.write_importance(tmp_path / "random", arch, None, list(chosen))
    with open(csv_path) as handle:
        assert {r["score"] for r in csv.DictReader(handle)} == {""}


def plt_imread(path):
    import matplotlib.image

    return np.asarray(matplotlib.image.imread(path))
