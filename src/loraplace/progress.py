"""Progress bars with an ETA for every phase that can take more than a few seconds.

Training, the eval-loss pass, generation for accuracy, the base model's evaluation and the
placement probe each show one (``TQDM_DISABLE=1`` turns them all off). Bars are transient
(``leave=False``): a finished phase leaves its one-line summary, not its bar.
"""

from __future__ import annotations

import os

from tqdm.auto import tqdm

__all__ = ["bar"]


def bar(total: int, desc: str, *, unit: str = "it", show: bool = True, leave: bool = False):
    """A transient tqdm bar over ``total`` units; a disabled one when ``show`` is false or the
    environment sets ``TQDM_DISABLE`` (tqdm reads it only when ``disable`` is not passed)."""
    off = not show or os.environ.get("TQDM_DISABLE", "").lower() not in ("", "0", "false")
    return tqdm(total=total, desc=desc, unit=unit, leave=leave, disable=off, dynamic_ncols=True)
