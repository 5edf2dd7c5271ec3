"""Precision: what auto resolves to, the frozen base in bf16 with the residual stream in fp32,
bf16 autocast on the CPU, and a study that never mixes precisions (its saved config)."""

from __future__ import annotations

import copy
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from helpers import tiny_study
from peft import LoraConfig, get_peft_model
from torch import nn

from loraplace import store
from loraplace.config.study import load_study_config, read_yaml
from loraplace.config.yamlio import dump_yaml
from loraplace.errors import ConfigError, LoraplaceError
from loraplace.settings import DataConfig, EvalSettings, LoraSettings, TrainingSettings
from loraplace.store import RunKey
from loraplace.studies.identity import prepare_study_dir
from loraplace.training import precision
from loraplace.training.loop import train_adapter
from loraplace.training.precision import (
    adapter_sums,
    autocast_for,
    compute_dtype,
    cpu_bf16_flags,
    resolve_precision,
    store_frozen,
)
from loraplace.training.records import RunSpec
from loraplace.training.run import train_one
from loraplace.training.workbench import Workbench

ROOT = Path(__file__).resolve().parents[1]
#: The committed studies written before the precision setting existed (their study.yaml has no
#: precision key): they must read as fp32 and resume as the same study.
COMMITTED = sorted(
    p.parent
    for p in (ROOT / "docs" / "results").glob("*/study.yaml")
    if "precision" not in (read_yaml(p).get("training") or {})
)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    # Tiny models: a second intra-op thread only adds synchronisation on a busy 2-core machine.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# --------------------------------------------------------------------------------------------
# What auto means


@pytest.mark.parametrize(
    "flags,found",
    [
        ("fpu sse avx512f avx512_bf16 amx_tile", ["avx512_bf16"]),
        ("fpu amx_bf16 amx_tile avx512_bf16", ["amx_bf16", "avx512_bf16"]),
        ("fpu sse2 avx2", []),
    ],
)
def test_the_cpus_bf16_instructions_are_read_from_cpuinfo(tmp_path, flags, found):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(
        f"processor\t: 0\nflags\t\t: {flags}\n\nprocessor\t: 1\nflags\t\t: {flags}\n"
    )
    assert cpu_bf16_flags(cpuinfo) == found
    assert cpu_bf16_flags(tmp_path / "missing") == []


@pytest.mark.parametrize(
    "asked,flags,resolved",
    [
        ("auto", ["avx512_bf16"], "bf16"),
        ("auto", ["amx_bf16"], "bf16"),
        ("auto", [], "fp32"),
        ("fp32", ["amx_bf16"], "fp32"),
        ("bf16", [], "bf16"),
    ],
)
def test_auto_is_bf16_where_the_cpu_multiplies_bf16_matrices(monkeypatch, asked, flags, resolved):
    monkeypatch.setattr(precision, "cpu_bf16_flags", lambda: flags)
    assert resolve_precision(asked, "cpu") == resolved


def test_on_cuda_auto_follows_the_gpus_bf16_and_an_explicit_bf16_without_it_is_refused(
    monkeypatch,
):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(precision, "cpu_bf16_flags", lambda: ["amx_bf16"])
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: True)
    assert resolve_precision("auto", "cuda") == "bf16"
    assert resolve_precision("auto", None) == "bf16"  # no device: CUDA when available
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: False)
    assert resolve_precision("auto", "cuda:0") == "fp32"  # the CPU's flags do not count
    assert resolve_precision("auto", "cpu") == "bf16"
    with pytest.raises(LoraplaceError, match="no bf16"):
        resolve_precision("bf16", "cuda")


def test_autocast_on_the_cpu_multiplies_in_bf16_and_fp32_is_untouched():
    a, b = torch.randn(4, 8), torch.randn(8, 3)
    with autocast_for("cpu", compute_dtype("bf16")):
        assert (a @ b).dtype == torch.bfloat16
    with autocast_for("cpu", compute_dtype("fp32")):
        assert torch.equal(a @ b, a @ b) and (a @ b).dtype == torch.float32


# --------------------------------------------------------------------------------------------
# The frozen base in bf16


class _Toy(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(10, 8)
        self.norm = nn.LayerNorm(8)
        self.proj = nn.Linear(8, 8)
        self.trained = nn.Linear(8, 2)

    def forward(self, ids):
        return self.trained(self.proj(self.norm(self.embed(ids))))


def test_frozen_matrices_go_to_bf16_and_the_residual_stream_stays_fp32():
    torch.manual_seed(0)
    model = _Toy()
    model.requires_grad_(False)
    model.trained.requires_grad_(True)
    reference = copy.deepcopy(model)
    saved = store_frozen(model, torch.bfloat16)
    assert model.embed.weight.dtype == model.proj.weight.dtype == torch.bfloat16
    assert model.proj.bias.dtype == model.norm.weight.dtype == torch.float32  # vectors stay
    assert model.trained.weight.dtype == torch.float32  # trainable: never converted
    assert saved == 2 * (10 * 8 + 8 * 8)
    ids = torch.tensor([[1, 2, 3]])
    assert model.embed(ids).dtype == torch.float32  # the embedding hands on fp32
    with autocast_for("cpu", torch.bfloat16):
        out = model(ids)
    assert torch.allclose(out.float(), reference(ids), atol=0.05)
    assert store_frozen(reference, torch.float32) == 0
    assert reference.proj.weight.dtype == torch.float32


class _One(nn.Module):
    def __init__(self):
        super().__init__()
        self.proj = nn.Linear(64, 64, bias=False)

    def forward(self, x):
        return self.proj(x)


def test_a_small_lora_update_survives_a_bf16_layer():
    # A short run's update is far below the spacing of bf16's grid at the base output: added
    # to it in bf16 it is rounded away entirely; added in fp32 it stays.
    torch.manual_seed(0)
    base = _One().requires_grad_(False)
    store_frozen(base, torch.bfloat16)
    model = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, target_modules=["proj"]))
    layer = model.base_model.model.proj
    with torch.no_grad():
        layer.lora_B["default"].weight.copy_(1e-5 * torch.randn(64, 4))
    x = torch.randn(16, 64)
    a, b = layer.lora_A["default"].weight, layer.lora_B["default"].weight
    with torch.no_grad():
        update = layer.scaling["default"] * (x @ a.T @ b.T)
    with torch.no_grad(), autocast_for("cpu", torch.bfloat16):
        with model.disable_adapter():
            alone = model(x)
        plain = model(x)
        with adapter_sums(model, torch.bfloat16):
            summed = model(x)
    assert alone.dtype == plain.dtype == torch.bfloat16 and summed.dtype == torch.float32
    # PEFT's bf16 sum: the update is gone but where the output is near zero.
    assert (plain != alone).float().mean() < 0.1
    kept = summed - alone.float()  # the update, to bf16's precision of computing it
    assert (kept - update).norm() < 0.02 * update.norm()
    assert layer.cast_input_dtype_enabled  # restored on leaving the block


def _tiny_peft(tiny_model_dir, dtype):
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    base.requires_grad_(False)
    store_frozen(base, dtype)
    torch.manual_seed(1)
    config = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "down_proj"])
    return get_peft_model(base, config)


def test_a_bf16_step_keeps_adapter_and_optimizer_in_fp32_and_follows_fp32(
    tiny_model_dir, tiny_data_file
):
    from conftest import make_tiny_tokenizer

    from loraplace.data.batching import tokenize_examples
    from loraplace.data.sources import load_dataset_split

    train, _, _ = load_dataset_split(
        DataConfig(dataset=str(tiny_data_file), train_examples=16, eval_examples=8, max_length=96)
    )
    features, _ = tokenize_examples(train, make_tiny_tokenizer(), 96)
    losses = {}
    for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        model = _tiny_peft(tiny_model_dir, dtype)
        states = []
        records = []
        train_adapter(
            model,
            features,
            steps=3,
            batch_size=4,
            learning_rate=1e-3,
            warmup_steps=0,
            weight_decay=0.0,
            max_grad_norm=1.0,
            seed=0,
            device="cpu",
            dtype=dtype,
            on_step=records.append,
            on_state=states.append,
        )
        trained = [p for p in model.parameters() if p.requires_grad]
        assert trained and all(p.dtype == torch.float32 for p in trained)
        moments = [t for s in states[-1].optimizer["state"].values() for t in s.values() if t.dim()]
        assert moments and all(t.dtype == torch.float32 for t in moments)
        losses[name] = [r["loss"] for r in records]
    assert losses["bf16"] == pytest.approx(losses["fp32"], rel=0.02)
    assert losses["bf16"] != losses["fp32"]  # it really computed in bf16


# --------------------------------------------------------------------------------------------
# The setting, the study's saved config, the record and the report


def test_the_setting_names_its_choices():
    with pytest.raises(ConfigError, match=r"training.precision must be one of fp32, bf16, auto"):
        TrainingSettings(precision="fp16")


def test_run_takes_a_precision_option():
    from loraplace.cli.main import build_parser

    parser = build_parser()
    run = next(a for a in parser._subparsers._group_actions[0].choices.items() if a[0] == "run")[1]
    text = run.format_help()
    assert "--precision" in text and "auto" in text
    args = parser.parse_args(["run", "--strategy", "all", "--precision", "bf16"])
    assert getattr(args, "training.precision") == "bf16"


def test_study_takes_a_precision_option_over_its_config(monkeypatch):
    from loraplace.cli import main as cli

    seen = {}
    monkeypatch.setattr(cli, "study", lambda config, **kw: seen.setdefault("config", config))
    monkeypatch.setattr(cli, "load_study_config", lambda raw: SimpleNamespace(resolved={}, **raw))
    args = cli.build_parser().parse_args(["study", "--preset", "smoke", "--precision", "bf16"])
    cli.cmd_study(args)
    assert seen["config"].training["precision"] == "bf16"
    seen.clear()
    cli.cmd_study(cli.build_parser().parse_args(["study", "--preset", "smoke"]))
    assert "precision" not in seen["config"].training
    with pytest.raises(SystemExit):
        cli.build_parser().parse_args(["study", "--precision", "fp16"])


def test_a_study_saves_the_precision_auto_chose_and_fp32_as_before(
    tiny_model_dir, tiny_data_file, monkeypatch
):
    monkeypatch.setattr(precision, "cpu_bf16_flags", lambda: ["avx512_bf16"])
    raw = tiny_study(tiny_model_dir, tiny_data_file)
    auto = {**raw, "training": {**raw["training"], "precision": "auto"}}
    config = load_study_config(auto, check_model=False)
    assert config.training.precision == "bf16"
    assert config.to_dict()["training"]["precision"] == "bf16"
    monkeypatch.setattr(precision, "cpu_bf16_flags", lambda: [])
    assert load_study_config(auto, check_model=False).training.precision == "fp32"
    plain = load_study_config(raw, check_model=False)
    assert plain.training.precision == "fp32"
    # fp32 is saved without the key: the study.yaml of a study from before bf16 stays the same.
    assert "precision" not in plain.to_dict()["training"]


@pytest.mark.parametrize("study", COMMITTED, ids=[p.name for p in COMMITTED])
def test_the_committed_studies_read_as_fp32_and_stay_the_same_study(study, tmp_path):
    assert len(COMMITTED) >= 6  # the glob found the studies from before the setting
    copy_dir = tmp_path / study.name
    copy_dir.mkdir()
    for name in (store.STUDY_FILE, store.IDENTITY_FILE):
        shutil.copy(study / name, copy_dir / name)
    before = read_yaml(copy_dir / store.STUDY_FILE)
    identity = (copy_dir / store.IDENTITY_FILE).read_bytes()
    config = load_study_config(copy_dir / store.STUDY_FILE, check_model=False)
    assert config.training.precision == "fp32"
    prepare_study_dir(config, copy_dir, store.read_json(copy_dir / store.IDENTITY_FILE))
    # Resumable: nothing refused, the identity unchanged, and no precision written into the
    # training section (a report key added since may be filled in).
    assert (copy_dir / store.IDENTITY_FILE).read_bytes() == identity
    assert read_yaml(copy_dir / store.STUDY_FILE)["training"] == before["training"]


def test_a_study_is_never_resumed_in_another_precision(tiny_model_dir, tiny_data_file, tmp_path):
    raw = tiny_study(tiny_model_dir, tiny_data_file)
    out = tmp_path / "study"
    out.mkdir()
    fp32 = load_study_config(raw, check_model=False)
    prepare_study_dir(fp32, out, {"model": "m", "data": "d"})
    bf16 = load_study_config(
        {**raw, "training": {**raw["training"], "precision": "bf16"}}, check_model=False
    )
    with pytest.raises(LoraplaceError, match=r"different config \(differs in: training\)"):
        prepare_study_dir(bf16, out, {"model": "m", "data": "d"})
    # And the other way round: a bf16 study is not gone on in fp32.
    other = tmp_path / "other"
    other.mkdir()
    prepare_study_dir(bf16, other, {"model": "m", "data": "d"})
    assert "precision: bf16" in (other / store.STUDY_FILE).read_text()
    with pytest.raises(LoraplaceError, match="differs in: training"):
        prepare_study_dir(fp32, other, {"model": "m", "data": "d"})
    # A study.yaml without the key is an fp32 study.
    legacy = tmp_path / "legacy"
    legacy.mkdir()
    saved = fp32.to_dict()
    (legacy / store.STUDY_FILE).write_text(dump_yaml(saved))
    assert "precision" not in (legacy / store.STUDY_FILE).read_text()
    prepare_study_dir(fp32, legacy, {"model": "m", "data": "d"})
    with pytest.raises(LoraplaceError, match="differs in: training"):
        prepare_study_dir(bf16, legacy, {"model": "m", "data": "d"})


@pytest.fixture(scope="module")
def bf16_bench(tiny_model_dir, tiny_data_file):
    return Workbench.load(
        str(tiny_model_dir),
        DataConfig(dataset=str(tiny_data_file), train_examples=24, eval_examples=12, max_length=96),
        precision="bf16",
    )


def test_a_bf16_run_records_its_precision_and_uses_the_prefix_cache(bf16_bench, tmp_path):
    bench = bf16_bench
    assert (bench.precision, bench.dtype, bench.device) == ("bf16", torch.bfloat16, "cpu")
    weights = [p for p in bench.model.parameters() if p.dim() >= 2]
    assert weights and all(p.dtype == torch.bfloat16 for p in weights)
    training = TrainingSettings(steps=2, batch_size=4, learning_rate=1e-3, precision="bf16")
    evaluation = EvalSettings(accuracy_examples=2, max_new_tokens=4, batch_size=8)
    lora = LoraSettings(rank=4, alpha=8, dropout=0.0)
    plan = bench.planner.plan({"top": "mlp@last:1"}, 4)[0]
    record = train_one(
        bench,
        plan,
        RunKey("top", 0),
        tmp_path / "run",
        spec=RunSpec(lora, training, evaluation, 1e-3, base=bench.base_metrics(evaluation)),
        show_progress=False,
    )
    assert record["status"] == "finished", record.get("error")
    assert record["precision"] == "bf16"
    assert record["config"]["training"]["precision"] == "bf16"
    assert record["prefix_cache"]["used"], record["prefix_cache"]
    assert store.read_result(tmp_path / "run")["precision"] == "bf16"


def test_the_report_states_a_precision_other_than_fp32(tmp_path):
    from helpers import MAIN, make_study

    from loraplace.report.build import write_report

    plain = make_study(tmp_path / "fp32", MAIN, examples=True)
    assert "computed in" not in (write_report(plain) / "report.md").read_text()
    bf16 = make_study(tmp_path / "bf16", MAIN, examples=True, training={"precision": "bf16"})
    text = (write_report(bf16) / "report.md").read_text()
    assert "reference `baseline`, computed in bf16." in text


def test_the_numerics_tables_in_concepts_are_printed_from_the_committed_studies():
    root = Path(__file__).resolve().parents[1]
    result = subprocess.run(
        [
            sys.executable,
            str(root / "bench" / "numerics.py"),
            str(root / "docs" / "results" / "default"),
            str(root / "docs" / "results" / "default-bf16"),
        ],
        capture_output=True,
        text=True,
        env={**os.environ, "TQDM_DISABLE": "1"},
    )
    printed = result.stdout
    assert result.returncode == 1, printed + result.stderr  # the check does not pass
    assert "every verdict the same: yes" in printed
    assert "differences against the reference moved by more than their seed SD: 1 of 3" in printed
    concepts = (root / "docs" / "CONCEPTS.md").read_text()
    section = concepts[concepts.index("## Precision") : concepts.index("## Learning-rate")]
    rows = [line for line in section.splitlines() if line.startswith("| ") and "−" in line[2:]]
    rows += [line for line in section.splitlines() if line.startswith("| all-linear |")]
    assert len(rows) >= 4
    for row in rows:
        # Every figure of the documented row is one the script printed.
        for figure in re.findall(r"[+−-]?\d+\.\d{4}", row):
            assert figure.replace("−", "-").lstrip("+-") in printed, (figure, row)
