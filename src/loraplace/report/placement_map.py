"""The placement map: strategies (rows) by decoder layers (columns), coloured by adapted roles.

:func:`plot_placement` draws ``placement.png`` from one :class:`PlacementRow` per strategy (the
``placement`` of its ``result.json``); :func:`role_category` and :func:`role_label` classify and
spell out one layer's roles. Matplotlib runs headless (Agg); saving goes through
:mod:`loraplace.figures`.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.colors import ListedColormap  # noqa: E402
from matplotlib.patches import Patch  # noqa: E402

from loraplace.placement.grammar import ATTN_ROLES, MLP_ROLES  # noqa: E402
from loraplace.report.figures import save_figure  # noqa: E402

__all__ = [
    "CATEGORIES",
    "PlacementRow",
    "role_category",
    "role_label",
    "plot_placement",
]

_ROLE_LETTER = {"q": "q", "k": "k", "v": "v", "o": "o", "gate": "g", "up": "u", "down": "d"}

#: Placement-map categories: (key, legend text, colour), in colour-index order.
CATEGORIES: tuple[tuple[str, str, str], ...] = (
    ("none", "no adapter", "#f2f2f2"),
    ("attn", "attention (all of q,k,v,o)", "#1f77b4"),
    ("attn-partial", "attention, some roles", "#9ecae1"),
    ("mlp", "MLP (all of gate,up,down)", "#ff7f0e"),
    ("mlp-partial", "MLP, some roles", "#fdd0a2"),
    ("all", "attention + MLP (every role)", "#6a3d9a"),
    ("mixed", "attention + MLP, some roles", "#cab2d6"),
)
_CATEGORY_INDEX = {key: i for i, (key, _, _) in enumerate(CATEGORIES)}
_DARK = {"attn", "mlp", "all"}


@dataclass(frozen=True)
class PlacementRow:
    """One strategy's row of the placement map."""

    label: str
    """Row label, e.g. ``"last-half  (all@last:15)"``."""
    placement: Mapping[str, Mapping[str, int]]
    """``{"<layer index>": {"<role>": rank}}`` as written in ``result.json``."""


def role_category(roles: Sequence[str], available: Sequence[str] = ATTN_ROLES + MLP_ROLES) -> str:
    """Classifies the set of adapted roles in one layer for the placement map.

    Args:
        roles: Roles adapted in the layer (``q k v o gate up down``).
        available: Roles the architecture has; an MLP without ``gate`` is complete with
            ``up,down``.

    Returns:
        One of the :data:`CATEGORIES` keys.
    """
    got = set(roles)
    if not got:
        return "none"
    attn_all = {r for r in ATTN_ROLES if r in available} or set(ATTN_ROLES)
    mlp_all = {r for r in MLP_ROLES if r in available} or set(MLP_ROLES)
    has_attn, has_mlp = bool(got & attn_all), bool(got & mlp_all)
    full_attn, full_mlp = attn_all <= got, mlp_all <= got
    unknown = bool(got - attn_all - mlp_all)
    if has_attn and has_mlp:
        return "all" if full_attn and full_mlp and not unknown else "mixed"
    if has_attn:
        return "attn" if full_attn and not unknown else "attn-partial"
    if has_mlp:
        return "mlp" if full_mlp and not unknown else "mlp-partial"
    return "mixed"


def role_label(roles: Sequence[str]) -> str:
    """Compact cell text: attention letters, then MLP letters on a second line.

    ``["q", "k", "v", "o", "gate", "up", "down"]`` gives ``"qkvo\\ngud"``.
    """
    got = set(roles)
    attn = "".join(_ROLE_LETTER[r] for r in ATTN_ROLES if r in got)
    mlp = "".join(_ROLE_LETTER[r] for r in MLP_ROLES if r in got)
    other = ",".join(sorted(got - set(ATTN_ROLES) - set(MLP_ROLES)))
    return "\n".join(s for s in (attn, mlp, other) if s)


def _matrix(
    rows: Sequence[PlacementRow], num_layers: int
) -> tuple[np.ndarray, list[list[str]], int | None]:
    seen = {role for r in rows for roles in r.placement.values() for role in roles}
    # result.json does not list the architecture's roles; an MLP never seen with a gate
    # (GPT-2, OPT, ...) is taken to have only up/down, so "mlp" there still reads as complete.
    available = (
        ATTN_ROLES + MLP_ROLES
        if "gate" in seen or "up" not in seen
        else ATTN_ROLES + ("up", "down")
    )
    ranks = Counter(int(k) for r in rows for roles in r.placement.values() for k in roles.values())
    usual = ranks.most_common(1)[0][0] if ranks else None
    cats = np.zeros((len(rows), num_layers), dtype=int)
    texts = [["" for _ in range(num_layers)] for _ in rows]
    for i, row in enumerate(rows):
        for layer, roles in row.placement.items():
            j = int(layer)
            if not 0 <= j < num_layers or not roles:
                continue
            cats[i, j] = _CATEGORY_INDEX[role_category(list(roles), available)]
            text = role_label(list(roles))
            cell_ranks = sorted({int(v) for v in roles.values()})
            if cell_ranks != [usual]:  # only ranks that differ from the study's usual one
                text += "\nr" + "/".join(map(str, cell_ranks))
            texts[i][j] = text
    return cats, texts, usual


def plot_placement(rows: Sequence[PlacementRow], num_layers: int, path: str | Path) -> Path:
    """Placement map: strategies (rows) × decoder layers (columns), coloured by adapted roles.

    Cells also spell out the roles (``qkvo`` = attention projections, ``gud`` = gate/up/down)
    when there is room, and a cell's rank when it differs from the study's most common rank.

    Args:
        rows: One :class:`PlacementRow` per strategy, top to bottom.
        num_layers: Number of decoder layers of the model.
        path: Where to write the PNG.

    Returns:
        ``path``.
    """
    num_layers = max(1, num_layers)
    cats, texts, usual = _matrix(rows, num_layers)
    width = min(22.0, 3.5 + 0.36 * num_layers)
    fig, ax = plt.subplots(figsize=(width, 1.6 + 0.55 * max(1, len(rows))))
    cmap = ListedColormap([c for _, _, c in CATEGORIES])
    ax.imshow(
        cats if len(rows) else np.zeros((1, num_layers), dtype=int),
        cmap=cmap,
        vmin=0,
        vmax=len(CATEGORIES) - 1,
        aspect="auto",
        interpolation="nearest",
    )
    if num_layers <= 48:
        for i, row_texts in enumerate(texts):
            for j, text in enumerate(row_texts):
                if text:
                    dark = CATEGORIES[cats[i, j]][0] in _DARK
                    ax.text(
                        j,
                        i,
                        text,
                        ha="center",
                        va="center",
                        fontsize=5.5,
                        linespacing=0.9,
                        color="white" if dark else "black",
                    )
    ax.set_yticks(range(len(rows)), [r.label for r in rows], fontsize=8)
    step = 1 if num_layers <= 40 else 5
    ax.set_xticks(range(0, num_layers, step))
    ax.tick_params(axis="x", labelsize=7)
    ax.set_xticks(np.arange(-0.5, num_layers, 1), minor=True)
    ax.set_yticks(np.arange(-0.5, max(1, len(rows)), 1), minor=True)
    ax.grid(which="minor", color="white", lw=1.2)
    ax.tick_params(which="minor", length=0)
    ax.set_xlabel("decoder layer (0 = closest to the embeddings)")
    rank_note = f"; rank {usual} unless shown" if usual is not None else ""
    ax.set_title(
        f"Where the LoRA adapters go (q,k,v,o = attention; g,u,d = gate,up,down{rank_note})"
    )
    used = set(np.unique(cats)) | {0}
    handles = [
        Patch(facecolor=c, edgecolor="gray", label=text)
        for i, (_, text, c) in enumerate(CATEGORIES)
        if i in used
    ]
    ax.legend(
        handles=handles, loc="upper left", bbox_to_anchor=(1.005, 1.0), fontsize=8, frameon=False
    )
    return save_figure(fig, path)
