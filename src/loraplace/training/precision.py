"""Numeric precision of a run: the autocast context its forward passes run under."""

from __future__ import annotations

import contextlib

import torch

__all__ = ["autocast_for"]


def autocast_for(device: str, dtype: torch.dtype):
    """bf16 autocast on CUDA when asked for; a no-op context elsewhere."""
    if device.startswith("cuda") and dtype == torch.bfloat16:
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()
