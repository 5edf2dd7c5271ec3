"""Safe loading: no model code runs without the opt-in, no unsafe pickle is unpickled, YAML is
plain bounded data, and every refusal is one line.

The hostile inputs are built here: a model directory whose ``auto_map`` names a ``.py`` file that
writes a marker file when imported, a ``pytorch_model.bin`` whose pickle would create a file, and
YAML "billion laughs" documents. A test fails if a marker appears.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import make_tiny_model_dir
from transformers import LlamaConfig

from loraplace import models
from loraplace.cli.main import main
from loraplace.config.yamlio import MAX_YAML_BYTES, MAX_YAML_DEPTH, dump_yaml, load_yaml, read_yaml
from loraplace.errors import ConfigError, DataError, LoraplaceError, StrategyError, short_repr
from loraplace.models import (
    build_meta_model,
    load_config,
    load_model,
    load_tokenizer,
    model_identity,
    packaged_file,
    resolve_model,
)
from loraplace.placement.planner import ModelPlanner

# --------------------------------------------------------------------------------------------
# Model code: trust_remote_code is never implicit


def _marker_code(marker: Path) -> str:
    """A model's custom code: importing it leaves a marker file, then defines real classes."""
    return (
        "import pathlib\n"
        f"pathlib.Path({str(marker)!r}).write_text('custom code ran')\n"
        "from transformers import LlamaConfig, LlamaForCausalLM\n"
        "class MarkerConfig(LlamaConfig):\n"
        "    model_type = 'marker-llama'\n"
        "class MarkerForCausalLM(LlamaForCausalLM):\n"
        "    config_class = MarkerConfig\n"
    )


AUTO_MAP = {
    "AutoConfig": "marker_code.MarkerConfig",
    "AutoModelForCausalLM": "marker_code.MarkerForCausalLM",
}


def _tiny_llama_fields() -> dict:
    return LlamaConfig(
        vocab_size=128,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
    ).to_dict()


def make_custom_code_dir(path: Path, marker: Path, *, model_type: str = "marker-llama") -> Path:
    """A config-only model directory whose config needs the model's own code to be read."""
    path.mkdir(parents=True)
    (path / "marker_code.py").write_text(_marker_code(marker))
    config = {**_tiny_llama_fields(), "model_type": model_type, "auto_map": AUTO_MAP}
    (path / "config.json").write_text(json.dumps(config))
    return path


def _cli(args: list[str], cwd: Path, env_extra: dict | None = None, stdin: str = ""):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", **(env_extra or {})}
    return subprocess.run(
        [sys.executable, "-m", "loraplace", *args],
        input=stdin,
        capture_output=True,
        text=True,
        cwd=cwd,
        env=env,
        timeout=300,
    )


@pytest.mark.parametrize(
    "command", [["inspect"], ["plan", "--strategy", "all"]], ids=["inspect", "plan"]
)
def test_cli_never_runs_model_code_even_when_stdin_says_yes(tmp_path, command):
    marker = tmp_path / "MARKER"
    model = make_custom_code_dir(tmp_path / "custom", marker)
    result = _cli(
        [*command, "--model", str(model)],
        cwd=tmp_path,
        env_extra={"HF_MODULES_CACHE": str(tmp_path / "modules")},
        stdin="y\n" * 200,  # what `yes | loraplace ...` feeds transformers' prompt
    )
    assert not marker.exists(), "the model's own code ran"
    assert result.returncode == 2, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("loraplace: error: ")
    assert "--trust-remote-code" in lines[0]
    assert "Traceback" not in result.stderr and "Do you wish" not in result.stdout


def test_opt_in_runs_the_model_code_for_planning(tmp_path, monkeypatch):
    # The opt-in must reach both the config and the meta model. Keep what transformers leaves
    # behind (its module cache, sys.path, the class registry) inside this test.
    from transformers import AutoModelForCausalLM, dynamic_module_utils

    monkeypatch.setattr(dynamic_module_utils, "HF_MODULES_CACHE", str(tmp_path / "modules"))
    monkeypatch.setattr(sys, "path", list(sys.path))
    registry = AutoModelForCausalLM._model_mapping
    monkeypatch.setattr(registry, "_extra_content", dict(registry._extra_content))
    for name in [m for m in sys.modules if m.startswith("transformers_modules")]:
        monkeypatch.delitem(sys.modules, name)
    marker = tmp_path / "MARKER"
    source = resolve_model(
        str(make_custom_code_dir(tmp_path / "custom", marker)), trust_remote_code=True
    )
    try:
        model = build_meta_model(load_config(source), trust_remote_code=source.trust_remote_code)
    finally:
        for name in [m for m in sys.modules if m.startswith("transformers_modules")]:
            del sys.modules[name]
    assert type(model).__name__ == "MarkerForCausalLM"
    assert source.describe()["trust_remote_code"] is True
    assert marker.exists()


def test_known_architecture_with_auto_map_loads_the_builtin_classes(tmp_path):
    # A LLaMA config that also names custom code: transformers' own classes are used instead,
    # for the config, the meta model, the weights and the tokenizer, and the code never runs.
    marker = tmp_path / "MARKER"
    model = make_tiny_model_dir(tmp_path / "llama")
    (model / "marker_code.py").write_text(_marker_code(marker))
    config = json.loads((model / "config.json").read_text())
    (model / "config.json").write_text(json.dumps({**config, "auto_map": AUTO_MAP}))
    source = resolve_model(str(model))
    assert source.trust_remote_code is False
    config = load_config(source)
    meta = build_meta_model(config, trust_remote_code=source.trust_remote_code)
    assert type(config).__name__ == "LlamaConfig"
    assert type(meta).__name__ == "LlamaForCausalLM"
    assert type(load_model(source)).__name__ == "LlamaForCausalLM"
    load_tokenizer(source)
    assert not marker.exists()


def test_tokenizer_that_needs_model_code_is_refused(tmp_path):
    marker = tmp_path / "MARKER"
    model = make_tiny_model_dir(tmp_path / "llama")
    (model / "marker_code.py").write_text(_marker_code(marker))
    tokenizer_config = json.loads((model / "tokenizer_config.json").read_text())
    tokenizer_config["tokenizer_class"] = "MarkerTokenizer"
    tokenizer_config["auto_map"] = {"AutoTokenizer": ["marker_code.MarkerTokenizer", None]}
    (model / "tokenizer_config.json").write_text(json.dumps(tokenizer_config))
    with pytest.raises(LoraplaceError, match="--trust-remote-code") as caught:
        load_tokenizer(resolve_model(str(model)))
    assert "tokenizer" in str(caught.value) and "\n" not in str(caught.value)
    assert not marker.exists()


def test_meta_model_that_needs_model_code_is_refused():
    # A config of a class transformers does not know, naming the model's own class: what a
    # trusted config load returns for a custom architecture.
    marker_config = type("MarkerConfig", (LlamaConfig,), {"model_type": "marker-llama"})
    config = marker_config(**{k: v for k, v in _tiny_llama_fields().items() if k != "model_type"})
    config.auto_map = {"AutoModelForCausalLM": "marker_code.MarkerForCausalLM"}
    with pytest.raises(LoraplaceError, match="--trust-remote-code"):
        build_meta_model(config)


def test_aliases_never_trust_model_code():
    source = resolve_model("smollm2-135m", trust_remote_code=True)
    assert source.trust_remote_code is False
    assert "trust_remote_code" not in source.describe()


# --------------------------------------------------------------------------------------------
# Weights: pickles torch refuses, corrupt files; one line each


class _CreatesFile:
    """Unpickling this calls ``open(path, 'w')``: what torch's weights-only loader must refuse."""

    def __init__(self, path: Path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


def _to_bin(model_dir: Path, extra: dict | None = None) -> Path:
    """Replace a directory's safetensors weights by a pickled ``pytorch_model.bin``."""
    from safetensors.torch import load_file

    state = load_file(str(model_dir / "model.safetensors"))
    (model_dir / "model.safetensors").unlink()
    torch.save({**state, **(extra or {})}, model_dir / "pytorch_model.bin")
    return model_dir / "pytorch_model.bin"


def test_pickled_weights_torch_refuses_are_named_and_never_unpickled(tmp_path):
    marker = tmp_path / "MARKER"
    model = make_tiny_model_dir(tmp_path / "pickled")
    weights = _to_bin(model, {"payload": _CreatesFile(marker)})
    with pytest.raises(LoraplaceError) as caught:
        load_model(resolve_model(str(model)))
    message = str(caught.value)
    assert str(weights) in message and "\n" not in message
    assert "safetensors" in message
    assert not marker.exists()


def test_plain_pickled_weights_still_load(tmp_path):
    reference = make_tiny_model_dir(tmp_path / "reference", seed=3)
    model = _to_bin(shutil.copytree(reference, tmp_path / "bin")).parent
    loaded = load_model(resolve_model(str(model)))
    expected = load_model(resolve_model(str(reference)))
    got, want = loaded.state_dict(), expected.state_dict()
    assert got.keys() == want.keys()
    for name in want:
        assert torch.equal(got[name], want[name]), name


@pytest.mark.parametrize(
    "damage", ["truncated weights", "no weights", "bad config", "no tokenizer"]
)
def test_damaged_model_directory_is_one_line(tmp_path, damage):
    model = make_tiny_model_dir(tmp_path / "model")
    if damage == "truncated weights":
        data = (model / "model.safetensors").read_bytes()
        (model / "model.safetensors").write_bytes(data[: len(data) // 2])
    elif damage == "no weights":
        (model / "model.safetensors").unlink()
    elif damage == "bad config":
        (model / "config.json").write_text('{"model_type": "llama", "hidden_size": ')
    else:
        for path in model.glob("tokenizer*"):
            path.unlink()
    source = resolve_model(str(model))
    with pytest.raises(LoraplaceError) as caught:
        load_tokenizer(source) if damage == "no tokenizer" else load_model(source)
    message = str(caught.value)
    assert str(model) in message and "\n" not in message and len(message) < 400


def test_hub_failures_are_one_line_with_the_offline_hint(monkeypatch):
    from transformers import AutoConfig

    def unreachable(*args, **kwargs):
        raise OSError("We couldn't connect to 'https://huggingface.co'.\nCheck your connection.")

    monkeypatch.setattr(AutoConfig, "from_pretrained", unreachable)
    with pytest.raises(LoraplaceError) as caught:
        load_config(resolve_model("some-org/some-model"))
    message = str(caught.value)
    assert "\n" not in message
    assert "hub model 'some-org/some-model'" in message and "without network access" in message


# --------------------------------------------------------------------------------------------
# Model identity


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_local_identity_hashes_config_and_weights(tmp_path):
    model = make_tiny_model_dir(tmp_path / "model")
    identity = model_identity(resolve_model(str(model)))
    assert identity == {
        "kind": "local",
        "files": {
            "config.json": _sha(model / "config.json"),
            "model.safetensors": _sha(model / "model.safetensors"),
        },
        "tokenizer": {
            name: _sha(model / name)
            for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja")
        },
        "generation": {"generation_config.json": _sha(model / "generation_config.json")},
    }
    # Content, not location: a copy elsewhere has the same identity.
    copy = shutil.copytree(model, tmp_path / "elsewhere" / "copy")
    assert model_identity(resolve_model(str(copy))) == identity


def test_local_identity_changes_with_any_weight_byte_or_new_weights_file(tmp_path):
    model = make_tiny_model_dir(tmp_path / "model")
    source = resolve_model(str(model))
    before = model_identity(source)
    weights = model / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0x01
    weights.write_bytes(bytes(data))
    flipped = model_identity(source)
    assert flipped != before
    assert flipped["files"]["config.json"] == before["files"]["config.json"]
    torch.save({}, model / "extra.bin")
    assert set(model_identity(source)["files"]) == {"config.json", "model.safetensors", "extra.bin"}


def test_local_identity_covers_code_only_when_it_is_trusted(tmp_path):
    model = make_tiny_model_dir(tmp_path / "model")
    (model / "marker_code.py").write_text("x = 1\n")
    assert "code" not in model_identity(resolve_model(str(model)))
    trusted = model_identity(resolve_model(str(model), trust_remote_code=True))
    assert trusted["code"] == {"marker_code.py": _sha(model / "marker_code.py")}


def test_hub_identity_is_the_id_and_a_config_hash(monkeypatch):
    configs = {"hidden_size": 32}

    def fake_config(source):
        return LlamaConfig(**configs)

    monkeypatch.setattr(models, "load_config", fake_config)
    source = resolve_model("some-org/some-model")
    first = model_identity(source)
    assert first["id"] == "some-org/some-model" and first == model_identity(source)
    configs["hidden_size"] = 64
    assert model_identity(source)["config_sha256"] != first["config_sha256"]


def test_alias_identity_is_the_packaged_gguf_hash():
    try:
        gguf = models._gguf_path("smollm2-135m")
    except LoraplaceError:
        pytest.skip("the embedded model package is not installed")
    identity = model_identity(resolve_model("smollm2-135m"))
    assert identity == {"kind": "alias", "id": "smollm2-135m", "files": {gguf.name: _sha(gguf)}}


# --------------------------------------------------------------------------------------------
# Files shipped in packages


def test_packaged_file_finds_a_resource_and_names_the_install_on_failure():
    found = packaged_file("loraplace", "config/presets/default.yaml", requirement="loraplace")
    assert found.is_file() and found.name == "default.yaml"
    with pytest.raises(LoraplaceError, match=r"pip install --no-deps nopkg-x==1\.0"):
        packaged_file("nopkg_x_not_installed", "a.txt", requirement="nopkg-x==1.0")
    with pytest.raises(DataError, match="'config/presets/absent.yaml' is missing"):
        packaged_file(
            "loraplace", "config/presets/absent.yaml", requirement="loraplace", error=DataError
        )


# --------------------------------------------------------------------------------------------
# Ranks larger than a module can use


@pytest.fixture(scope="module")
def planner(tmp_path_factory):
    path = tmp_path_factory.mktemp("ranks") / "llama"
    LlamaConfig(
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=128,
    ).save_pretrained(path)
    return ModelPlanner.for_model(str(path))


# hidden 64, 4 heads of 16, 2 KV heads: k_proj and v_proj are 64 -> 32, the MLP 64 <-> 128.
KV_OUT = 2 * (64 // 4)


@pytest.mark.parametrize(
    "strategy, rank, module, shape, largest",
    [
        ("all", KV_OUT + 1, "model.layers.0.self_attn.k_proj", "64->32", KV_OUT),
        ("v", KV_OUT + 1, "model.layers.0.self_attn.v_proj", "64->32", KV_OUT),
        ("mlp", 65, "model.layers.0.mlp.gate_proj", "64->128", 64),
        ("q+v:r40", 8, "model.layers.0.self_attn.v_proj", "64->32", KV_OUT),
    ],
)
def test_rank_above_the_smaller_dimension_is_refused(
    planner, strategy, rank, module, shape, largest
):
    with pytest.raises(StrategyError) as caught:
        planner.plan({"s": strategy}, rank)
    message = str(caught.value)
    assert f"'{module}' ({shape})" in message
    assert f"largest valid rank for it is {largest}" in message


@pytest.mark.parametrize("strategy, rank", [("all", KV_OUT), ("mlp", 64), ("q,o", 64)])
def test_rank_equal_to_the_smaller_dimension_is_allowed(planner, strategy, rank):
    (plan,) = planner.plan({"s": strategy}, rank)
    assert max(plan.module_ranks.values()) == rank


def test_parameter_match_needing_too_large_a_rank_is_refused(planner):
    # 'k' costs (64 + 32) per layer per unit of rank, over 2 layers; rank 32 is its ceiling.
    unit = 2 * (64 + 32)
    (plan,) = planner.plan({"k": "k"}, 8, match_params=KV_OUT * unit)
    assert plan.rank == KV_OUT
    with pytest.raises(StrategyError, match=r"needs rank 40 .* allows at most rank 32"):
        planner.plan({"k": "k"}, 8, match_params=40 * unit)


def test_cli_plan_with_too_large_a_rank_is_one_line(tmp_path, capsys):
    LlamaConfig(hidden_size=64, num_attention_heads=4, num_key_value_heads=2).save_pretrained(
        tmp_path / "llama"
    )
    code = main(["plan", "--model", str(tmp_path / "llama"), "--strategy", "all", "--rank", "33"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "largest valid rank for it is 32" in err


# --------------------------------------------------------------------------------------------
# YAML


def billion_laughs(levels: int = 9, width: int = 9) -> str:
    """The classic alias bomb: ``width ** levels`` leaves from a few hundred bytes."""
    lines = ["a0: &a0 [lol]"]
    for level in range(1, levels + 1):
        refs = ", ".join([f"*a{level - 1}"] * width)
        lines.append(f"a{level}: &a{level} [{refs}]")
    return "\n".join(lines) + "\n"


def test_alias_bomb_is_refused_at_once():
    text = billion_laughs()
    assert len(text) < 800  # 9 ** 9 = 387,420,489 strings if expanded
    with pytest.raises(ConfigError, match="anchors and aliases are not allowed") as caught:
        load_yaml(text, "bomb.yaml")
    # Refused at the first anchor, on line 1, before any alias could be expanded.
    assert "bomb.yaml" in str(caught.value) and "line 1" in str(caught.value)


@pytest.mark.parametrize(
    "text, key, line",
    [
        ("name: a\nname: b\n", "'name'", 2),
        ("lora:\n  rank: 8\n  alpha: 16\n  rank: 4\n", "'rank'", 4),
        ("strategies:\n  - {x: 1}\n  - {y: 1, y: 2}\n", "'y'", 3),
        ("seeds: 1\n? seeds\n: 2\n", "'seeds'", 2),
    ],
)
def test_duplicate_keys_are_named_with_their_line(text, key, line):
    with pytest.raises(ConfigError, match=f"duplicate key {key} on line {line}"):
        load_yaml(text, "c.yaml")


@pytest.mark.parametrize(
    "text, expected",
    [
        ("a: [1, 2", "not valid YAML"),
        ("a: b: c", "not valid YAML"),
        ("a: 1\n---\nb: 2\n", "not valid YAML"),
        ("a: !!python/object/apply:os.system [echo hi]", "tags"),
        ("n: !!int\n", "tags"),
        ("n: !!bool x\n", "tags"),
        ("s: ! 12\n", "tags"),
        ("<<: {a: 1}\n", "merge keys"),
        ("? [1, 2]\n: x\n", "mapping key must be a plain value"),
        ("when: 2001-13-45\n", "invalid value"),
        ("n: 0x_\n", "invalid value"),
        ("n: " + "9" * 5000 + "\n", "invalid value"),
        ("a: \x07\n", "U+0007"),
    ],
)
def test_bad_yaml_is_one_config_error_line(text, expected):
    with pytest.raises(ConfigError) as caught:
        load_yaml(text, "c.yaml")
    assert expected in str(caught.value) and "\n" not in str(caught.value)


def test_size_and_depth_are_bounded():
    big = "k: '" + "x" * MAX_YAML_BYTES + "'\n"
    with pytest.raises(ConfigError, match="larger than 1,000,000 bytes"):
        load_yaml(big, "big.yaml")
    deep = "[" * (MAX_YAML_DEPTH + 1) + "]" * (MAX_YAML_DEPTH + 1)
    with pytest.raises(ConfigError, match=f"deeper than {MAX_YAML_DEPTH}"):
        load_yaml(deep, "deep.yaml")
    ok = "[" * MAX_YAML_DEPTH + "]" * MAX_YAML_DEPTH
    value = load_yaml(ok, "ok.yaml")
    for _ in range(MAX_YAML_DEPTH - 1):
        (value,) = value
    assert value == []


def test_read_yaml_refuses_a_huge_file_without_reading_it(tmp_path):
    huge = tmp_path / "huge.yaml"
    with open(huge, "wb") as handle:  # sparse: 2 GB by size, no disk used
        handle.truncate(2 * 1024**3)
    with pytest.raises(ConfigError, match="larger than"):
        read_yaml(huge)
    latin = tmp_path / "latin.yaml"
    latin.write_bytes("name: caf\xe9\n".encode("latin-1"))
    with pytest.raises(ConfigError, match="not UTF-8"):
        read_yaml(latin)
    with pytest.raises(ConfigError, match="cannot read"):
        read_yaml(tmp_path / "absent.yaml")


def test_plain_config_loads_and_dump_round_trips_shared_objects():
    text = "name: t\nlora: {rank: 8, alpha: 16.0}\nstrategies: [all, attn]\nseeds: [0, 1]\n"
    data = load_yaml(text, "c.yaml")
    assert data == {
        "name": "t",
        "lora": {"rank": 8, "alpha": 16.0},
        "strategies": ["all", "attn"],
        "seeds": [0, 1],
    }
    shared = [0, 1]
    dumped = dump_yaml({"seeds": shared, "again": shared, "name": "café"})
    assert "&" not in dumped and "*" not in dumped
    assert load_yaml(dumped, "dumped") == {"seeds": [0, 1], "again": [0, 1], "name": "café"}


# --------------------------------------------------------------------------------------------
# Echoed values


def test_short_repr_caps_what_an_error_echoes():
    assert short_repr("abc") == "'abc'"
    long = short_repr("x" * 10_000, limit=80)
    assert len(long) == 80 and long.startswith("'xxx") and long.endswith("...")
    assert short_repr("two\nlines") == "'two\\nlines'"

    class Counted:
        shown = 0

        def __repr__(self) -> str:
            Counted.shown += 1
            return "c"

    # A full repr would show each of the 100,000 items; a capped one stops after a few.
    huge = short_repr([Counted()] * 100_000)
    assert len(huge) <= 80 and huge.startswith("[c, c") and huge.endswith("...]")
    assert 0 < Counted.shown <= 12
