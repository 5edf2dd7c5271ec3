"""A placement as a readable strategy string: the chosen modules, at their ranks, written in
the strategy grammar so that it compiles back to exactly them (docs/PLACEMENT.md).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from loraplace.errors import StrategyError
from loraplace.placement.arch import ArchInfo
from loraplace.placement.grammar import ATTN_ROLES, MLP_ROLES, ROLES, LayerSelector
from loraplace.placement.plan import compile_plan

__all__ = ["render_strategy"]


def _group_names(roles: frozenset[str], present: frozenset[str]) -> str:
    """Group names for a role set: ``all``, ``attn``, ``qkv``, ``mlp`` where they fit exactly."""
    if roles == present:
        return "all"
    names: list[str] = []
    for block, word in ((ATTN_ROLES, "attn"), (MLP_ROLES, "mlp")):
        in_block = [r for r in block if r in present]
        mine = [r for r in block if r in roles]
        if in_block and mine == in_block:
            names.append(word)
        elif {"q", "k", "v"} <= set(mine):
            names += ["qkv"] + [r for r in mine if r not in ("q", "k", "v")]
        else:
            names += mine
    return ",".join(names)


def _layers_text(layers: frozenset[int], num_layers: int) -> str:
    """The shortest selector of exactly ``layers``: nothing for all, an ``every:``, or a list."""
    if len(layers) == num_layers:
        return ""
    text = str(LayerSelector.from_layers(layers))
    offset = min(layers)
    for n in range(2, num_layers):
        if layers == frozenset(range(offset, num_layers, n)) and len(layers) >= 3:
            every = f"every:{n}" if offset == 0 else f"every:{n}:{offset}"
            text = min(text, every, key=len)
    return "@" + text


def render_strategy(chosen: Mapping[str, int] | Iterable[str], arch: ArchInfo, rank: int) -> str:
    """A strategy string that adapts exactly the ``chosen`` modules at their ranks.

    Two spellings are tried, and the one with fewer parts (then the shorter) wins: group the roles
    that share a layer set (``q,v+o@10-19``), or group the layers that share a role set
    (``mlp@20-29+q,v@0-3,7``). Role sets are named with ``all``/``attn``/``qkv``/``mlp`` where
    they are exactly that group in this model, layers as sorted runs (``0-3,7``) or
    ``every:N[:OFFSET]``, and ``:rN`` appears only on parts whose rank is not ``rank``.

    Args:
        chosen: full module name -> rank, or module names (all at ``rank``).
        arch: the classifier's result for the model.
        rank: the global rank the strategy will be compiled with.

    Returns:
        The strategy string; ``compile_plan`` of it at ``rank`` adapts exactly ``chosen``.

    Raises:
        StrategyError: when ``chosen`` is empty or names a module ``arch`` does not have.
    """
    if not isinstance(chosen, Mapping):
        chosen = dict.fromkeys(chosen, rank)
    by_name = {p.name: p for p in arch.projections}
    unknown = [name for name in chosen if name not in by_name]
    if not chosen or unknown:
        raise StrategyError(f"cannot render a placement of {unknown or 'no module'}")
    present = frozenset(arch.roles_present)
    layers_of: dict[tuple[int, str], set[int]] = {}
    for name, r in chosen.items():
        for role in by_name[name].roles:
            layers_of.setdefault((r, role), set()).add(by_name[name].layer)
    by_layers: dict[tuple[int, frozenset[int]], set[str]] = {}
    by_roles: dict[tuple[int, frozenset[str]], set[int]] = {}
    for (r, role), layers in layers_of.items():
        by_layers.setdefault((r, frozenset(layers)), set()).add(role)
        for layer in layers:
            roles = frozenset(q for (rq, q), ls in layers_of.items() if rq == r and layer in ls)
            by_roles.setdefault((r, roles), set()).add(layer)
    spellings = [
        [(r, frozenset(roles), layers) for (r, layers), roles in by_layers.items()],
        [(r, roles, frozenset(layers)) for (r, roles), layers in by_roles.items()],
    ]

    def part(r: int, roles: frozenset[str], layers: frozenset[int]) -> str:
        suffix = "" if r == rank else f":r{r}"
        return _group_names(roles, present) + _layers_text(layers, arch.num_layers) + suffix

    def order(item):
        r, roles, layers = item
        return (r != rank, r, min(ROLES.index(q) for q in roles), min(layers))

    texts = ["+".join(part(*item) for item in sorted(parts, key=order)) for parts in spellings]
    text = min(texts, key=lambda t: (t.count("+"), len(t)))
    plan = compile_plan(text, arch, rank, base_params=0)
    assert plan.module_ranks == {
        p.name: chosen[p.name] for p in arch.projections if p.name in chosen
    }, f"rendered strategy '{text}' does not adapt exactly the chosen modules"
    return text
