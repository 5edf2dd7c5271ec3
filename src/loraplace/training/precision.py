"""Numeric precision of a run: which precision ``auto`` means on this machine, how the frozen
base is stored, and the autocast context its forward passes run under.

``fp32`` computes everything in float32. ``bf16`` stores the frozen base's weight matrices
(linear layers, embeddings, the LM head) in bfloat16 and runs the forward pass under bf16
autocast, on the CPU's matrix units (AMX-BF16, AVX512-BF16) or on CUDA; the adapters, their
gradients, the optimizer state, the residual stream and every loss reduction stay in float32
(docs/CONCEPTS.md, "Precision").
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import torch
from torch import nn

from loraplace.errors import LoraplaceError

__all__ = [
    "adapter_sums",
    "autocast_for",
    "compute_dtype",
    "cpu_bf16_flags",
    "prepare_base",
    "resolve_precision",
    "store_frozen",
]

#: ``/proc/cpuinfo`` flags of the x86 instructions that multiply bf16 matrices in hardware.
BF16_FLAGS = ("amx_bf16", "avx512_bf16")


def cpu_bf16_flags(cpuinfo: Path = Path("/proc/cpuinfo")) -> list[str]:
    """The bf16 matrix instructions this CPU reports (:data:`BF16_FLAGS`); none where the file
    cannot be read (not Linux, say)."""
    try:
        text = cpuinfo.read_text(errors="replace")
    except OSError:
        return []
    flags: set[str] = set()
    for line in text.splitlines():
        if line.startswith("flags"):
            flags.update(line.partition(":")[2].split())
    return [f for f in BF16_FLAGS if f in flags]


def resolve_precision(precision: str, device: str | None) -> str:
    """The precision a run computes in: ``precision`` itself, or for ``auto`` bf16 where the
    hardware multiplies bf16 matrices (a CUDA GPU with bf16, a CPU with AMX-BF16 or
    AVX512-BF16) and fp32 elsewhere.

    Args:
        precision: ``fp32``, ``bf16`` or ``auto``.
        device: ``cpu``, ``cuda`` or ``cuda:N``; ``None`` is CUDA when available.

    Returns:
        ``fp32`` or ``bf16``.

    Raises:
        LoraplaceError: bf16 was asked for on a CUDA device without bf16.
    """
    cuda = (device or ("cuda" if torch.cuda.is_available() else "cpu")).startswith("cuda")
    cuda_bf16 = cuda and torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    if precision == "auto":
        if cuda:
            return "bf16" if cuda_bf16 else "fp32"
        return "bf16" if cpu_bf16_flags() else "fp32"
    if precision == "bf16" and cuda and torch.cuda.is_available() and not cuda_bf16:
        raise LoraplaceError(
            "training.precision is bf16 but this GPU has no bf16; use fp32 (or auto)"
        )
    return precision


def compute_dtype(precision: str) -> torch.dtype:
    """The autocast dtype of a resolved precision (float32 means no autocast)."""
    return torch.bfloat16 if precision == "bf16" else torch.float32


def autocast_for(device: str, dtype: torch.dtype):
    """bf16 autocast on ``device`` (CPU or CUDA) when ``dtype`` is bf16; a no-op context else."""
    if dtype == torch.bfloat16:
        return torch.autocast("cuda" if device.startswith("cuda") else "cpu", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def prepare_base(model: nn.Module, device: str, dtype: torch.dtype) -> None:
    """Ready a frozen base model for runs computing in ``dtype`` on ``device``, in place.

    bf16: the frozen weight matrices are stored in bf16 (:func:`store_frozen`), and on the CPU
    attention is computed by its two matrix products and a float32 softmax (transformers'
    ``eager`` attention) rather than the fused SDPA kernel, whose bf16 CPU kernel is the slower
    of the two (31 against 45 ms per layer, forward and backward, at the default study's batch
    size; docs/CONCEPTS.md, "Precision"). fp32 changes nothing.

    Args:
        model: The frozen base model, before any adapter is attached.
        device: Where it is.
        dtype: The runs' compute dtype.
    """
    if dtype == torch.float32:
        return
    store_frozen(model, dtype)
    if not device.startswith("cuda") and hasattr(model, "set_attn_implementation"):
        model.set_attn_implementation("eager")


def _float32_output(module, args, output):
    return output.float()


@contextlib.contextmanager
def adapter_sums(model: nn.Module, dtype: torch.dtype):
    """Within the block, each LoRA layer adds its update to the base output in float32 (bf16).

    Under bf16 autocast a LoRA layer computes ``base(x)`` and ``B A x`` in bf16 and adds them in
    bf16. The base output is then already on bf16's grid (8 significant bits), and an update
    smaller than half its spacing, as a short run's updates mostly are, is rounded away
    entirely: the model in the forward pass is not the model being trained. Turning the base
    output to float32 before the addition keeps the update in the layer's output; the next
    bf16 matrix product rounds a value that is no longer on the grid, so the update survives
    it on average. (A merged ``W + ΔW`` in bf16 loses it the same way, so bf16 evaluation does
    not merge; docs/CONCEPTS.md, "Precision".) PEFT's cast of the layer's input to the
    adapter's float32 is switched off as well (``cast_input_dtype_enabled``): autocast casts it
    back to bf16 for ``A`` anyway, so the round trip only cost copies. A no-op for float32.

    Args:
        model: A PEFT-wrapped model.
        dtype: The run's compute dtype.
    """
    layers = [m for m in model.modules() if hasattr(m, "cast_input_dtype_enabled")]
    if dtype == torch.float32 or not layers:
        yield
        return
    before = [m.cast_input_dtype_enabled for m in layers]
    hooks = []
    try:
        for module in layers:
            module.cast_input_dtype_enabled = False
            base = getattr(module, "base_layer", None)
            if isinstance(base, nn.Module):
                hooks.append(base.register_forward_hook(_float32_output))
        yield
    finally:
        for hook in hooks:
            hook.remove()
        for module, value in zip(layers, before):
            module.cast_input_dtype_enabled = value


def store_frozen(model: nn.Module, dtype: torch.dtype) -> int:
    """Store the frozen weight matrices of ``model`` in ``dtype``, in place, once.

    Every parameter of two or more dimensions that does not require a gradient (the linear
    layers, the embeddings and a tied LM head) is converted; vectors (norm weights, biases)
    stay as they are, as does every trainable parameter. Embedding outputs are turned back to
    float32 by a forward hook, so the residual stream stays in float32: bf16 only enters
    through autocast's matrix multiplications. Autocast then finds its weights already in bf16
    and casts none of them again, step after step. A no-op for float32.

    Args:
        model: The frozen base model (before any adapter is attached).
        dtype: ``torch.bfloat16`` (or ``torch.float32``: nothing to do).

    Returns:
        Bytes of weights no longer held (0 for float32).
    """
    if dtype == torch.float32:
        return 0
    saved = 0
    with torch.no_grad():
        for param in model.parameters():
            if param.requires_grad or param.dim() < 2 or param.dtype == dtype:
                continue
            before = param.numel() * param.element_size()
            param.data = param.data.to(dtype)
            saved += before - param.numel() * param.element_size()
    for module in model.modules():
        if isinstance(module, nn.Embedding):
            module.register_forward_hook(_float32_output)
    return saved
