"""Provenance of a run: the software versions and the hardware it ran on."""

from __future__ import annotations

import os
import platform

import torch

from loraplace.version import __version__

__all__ = ["versions", "hardware"]


def versions() -> dict:
    """Versions of loraplace, torch, transformers, peft and Python."""
    import peft
    import transformers

    return {
        "loraplace": __version__,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "peft": peft.__version__,
        "python": platform.python_version(),
    }


def hardware(device: str) -> dict:
    """The device kind and name, CPU count and torch threads of this process."""
    info = {
        "device": "cuda" if device.startswith("cuda") else "cpu",
        "cpus": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "platform": platform.platform(),
    }
    if info["device"] == "cuda":
        info["name"] = torch.cuda.get_device_name(torch.device(device))
    else:
        info["name"] = platform.processor() or platform.machine()
    return info
