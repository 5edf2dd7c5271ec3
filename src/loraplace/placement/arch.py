"""The architecture classifier: which linear module of each decoder layer plays which role.

Roles are ``q k v o`` (attention projections) and ``gate up down`` (MLP projections). A module
can carry several roles when the model fuses them (GPT-2's ``c_attn`` is ``q,k,v``; Phi-3's
``gate_up_proj`` is ``gate,up``). Classification uses the module's name where it is a known one
(:data:`NAME_ROLES`, one row per spelling), the block it lives in (attention or MLP), and its
shape relative to the hidden and intermediate sizes, so an unfamiliar naming with a standard
structure still classifies. Adding an architecture with new names is adding rows to the table.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from loraplace.errors import ArchitectureError
from loraplace.placement.grammar import ROLES

__all__ = ["NAME_ROLES", "Projection", "ArchInfo", "classify", "linear_shape"]

#: Leaf module names with an unambiguous role (or fused roles).
NAME_ROLES: dict[str, tuple[str, ...]] = {
    # attention, separate projections
    "q_proj": ("q",),
    "query": ("q",),
    "wq": ("q",),
    "q": ("q",),
    "k_proj": ("k",),
    "key": ("k",),
    "wk": ("k",),
    "k": ("k",),
    "v_proj": ("v",),
    "value": ("v",),
    "wv": ("v",),
    "v": ("v",),
    "o_proj": ("o",),
    "out_proj": ("o",),
    "wo": ("o",),
    "o": ("o",),
    # attention, fused q/k/v
    "c_attn": ("q", "k", "v"),  # GPT-2
    "qkv_proj": ("q", "k", "v"),  # Phi-3
    "query_key_value": ("q", "k", "v"),  # GPT-NeoX, Falcon, BLOOM
    "wqkv": ("q", "k", "v"),
    "qkv": ("q", "k", "v"),
    "w_pack": ("q", "k", "v"),
    # MLP
    "gate_proj": ("gate",),
    "w1": ("gate",),
    "up_proj": ("up",),
    "w3": ("up",),
    "c_fc": ("up",),
    "fc1": ("up",),
    "fc_in": ("up",),
    "dense_h_to_4h": ("up",),
    "down_proj": ("down",),
    "w2": ("down",),
    "fc2": ("down",),
    "fc_out": ("down",),
    "dense_4h_to_h": ("down",),
    "gate_up_proj": ("gate", "up"),  # Phi-3
}

#: Leaf names whose role depends on the block: the output projection of attention or MLP.
OUTPUT_NAMES = {"dense", "c_proj", "proj", "out", "output"}

_ATTN_WORDS = ("attn", "attention")
_MLP_WORDS = ("mlp", "ffn", "feed_forward", "feedforward")


def linear_shape(module: nn.Module) -> tuple[int, int] | None:
    """``(in_features, out_features)`` of an ``nn.Linear`` or transformers ``Conv1D``, else None."""
    if isinstance(module, nn.Linear):
        return module.in_features, module.out_features
    if type(module).__name__ == "Conv1D" and hasattr(module, "nf"):
        # transformers' Conv1D stores its weight as (in, out).
        return int(module.weight.shape[0]), int(module.nf)
    return None


@dataclass(frozen=True)
class Projection:
    """One linear module inside a decoder layer.

    Attributes:
        name: full module name in the model, e.g. ``model.layers.3.self_attn.q_proj``.
        local_name: the name inside its layer, e.g. ``self_attn.q_proj``.
        layer: the 0-based decoder layer index.
        roles: the roles it carries (more than one when fused).
        in_features: input width.
        out_features: output width.
        kind: ``Linear`` or ``Conv1D``.
    """

    name: str
    local_name: str
    layer: int
    roles: tuple[str, ...]
    in_features: int
    out_features: int
    kind: str

    @property
    def fused(self) -> bool:
        return len(self.roles) > 1


@dataclass(frozen=True)
class ArchInfo:
    """What the classifier found in a model.

    Attributes:
        model_type: ``config.model_type`` (e.g. ``llama``, ``gpt2``).
        layers_path: the dotted path of the decoder-layer list (``model.layers``).
        num_layers: number of decoder layers.
        hidden_size: the model width.
        projections: every classified linear module, in layer order.
    """

    model_type: str
    layers_path: str
    num_layers: int
    hidden_size: int
    projections: tuple[Projection, ...]

    def in_layer(self, layer: int) -> list[Projection]:
        return [p for p in self.projections if p.layer == layer]

    @property
    def roles_present(self) -> set[str]:
        return {role for p in self.projections for role in p.roles}


def _config_int(config, *names: str) -> int | None:
    for name in names:
        value = getattr(config, name, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def _find_layers(model: nn.Module, num_layers: int | None) -> tuple[str, nn.ModuleList]:
    candidates = []
    for name, module in model.named_modules():
        if not isinstance(module, nn.ModuleList) or len(module) == 0:
            continue
        if len({type(child) for child in module}) != 1:
            continue
        n_linear = sum(linear_shape(m) is not None for m in module[0].modules())
        if n_linear == 0:
            continue
        matches_config = num_layers is not None and len(module) == num_layers
        candidates.append((matches_config, len(module), n_linear, name, module))
    if not candidates:
        found = [n for n, m in model.named_modules() if linear_shape(m) is not None][:12]
        raise ArchitectureError(
            f"cannot find the decoder layers of {type(model).__name__}: no list of repeated blocks "
            f"holding linear modules (linear modules found: {', '.join(found) or 'none'})"
        )
    candidates.sort(key=lambda c: (c[0], c[1], c[2]), reverse=True)
    _, _, _, name, module = candidates[0]
    return name, module


def _block_of(local_name: str) -> str | None:
    parents = [piece.lower() for piece in local_name.split(".")[:-1]]
    for piece in reversed(parents):
        if any(word in piece for word in _ATTN_WORDS):
            return "attn"
        if any(word in piece for word in _MLP_WORDS):
            return "mlp"
    return None


class _Dims:
    def __init__(self, config, hidden: int):
        self.hidden = hidden
        heads = _config_int(config, "num_attention_heads", "n_head", "num_heads")
        self.head_dim = _config_int(config, "head_dim") or (hidden // heads if heads else None)
        kv_heads = _config_int(config, "num_key_value_heads", "num_kv_heads") or heads
        if getattr(config, "multi_query", False) and not getattr(
            config, "new_decoder_architecture", False
        ):
            kv_heads = 1
        self.q_out = heads * self.head_dim if heads and self.head_dim else hidden
        self.kv_out = kv_heads * self.head_dim if kv_heads and self.head_dim else hidden
        inter = _config_int(config, "intermediate_size", "n_inner", "ffn_dim", "ffn_hidden_size")
        self.intermediate = inter or 4 * hidden

    def qkv_outs(self) -> set[int]:
        return {self.q_out + 2 * self.kv_out, 3 * self.hidden}


def _side(name: str, shape: tuple[int, int], block_names: list[str], dims: _Dims) -> str:
    """``in`` for projections reading the residual stream, ``out`` for those writing back to it."""
    n_in, n_out = shape
    if n_in != dims.hidden:
        return "out"
    # Square attention projections (q_out == hidden) look alike; the block's last one is its output.
    if n_out == dims.hidden == dims.q_out and len(block_names) > 1 and name == block_names[-1]:
        return "out"
    return "in"


# C901: one rule per naming convention of a decoder family.
def _roles_by_structure(  # noqa: C901
    block: str | None,
    shape: tuple[int, int],
    dims: _Dims,
    side: str,
    order_in_side: int,
    n_in_side: int,
) -> tuple[str, ...] | None:
    n_in, n_out = shape
    h = dims.hidden
    if block is None:
        if n_in == h and n_out == dims.intermediate:
            block = "mlp"
        elif n_in == dims.intermediate and n_out == h:
            block = "mlp"
        elif n_in == h and (n_out in dims.qkv_outs() or n_out in (dims.q_out, dims.kv_out)):
            block = "attn"
        else:
            return None
    if block == "attn":
        if side == "out":
            return ("o",) if n_out == h and n_in == dims.q_out else None
        if n_out in dims.qkv_outs() and n_in_side == 1:
            return ("q", "k", "v")
        if n_in_side == 3:
            return (("q",), ("k",), ("v",))[order_in_side]
        return None
    if side == "out":
        return ("down",) if n_out == h and n_in == dims.intermediate else None
    if n_out == 2 * dims.intermediate:
        return ("gate", "up")
    if n_out == dims.intermediate:
        if n_in_side == 2:
            return (("gate",), ("up",))[order_in_side]
        if n_in_side == 1:
            return ("up",)
    return None


def classify(model: nn.Module) -> ArchInfo:  # noqa: C901 (the classifier's cases in the order it tries them)
    """Classify every linear module in every decoder layer of ``model``.

    Works on models built on the ``meta`` device (only shapes are read).

    Raises:
        ArchitectureError: when the decoder layers cannot be found, or a linear module in them
            cannot be given a role; the message lists the linear modules found.
    """
    config = getattr(model, "config", None)
    model_type = getattr(config, "model_type", type(model).__name__)
    num_layers = _config_int(config, "num_hidden_layers", "n_layer", "num_layers")
    layers_path, layers = _find_layers(model, num_layers)
    hidden = _config_int(config, "hidden_size", "n_embd", "d_model", "word_embed_proj_dim")
    if hidden is None:
        raise ArchitectureError(f"cannot read the hidden size of {model_type} from its config")
    dims = _Dims(config, hidden)

    projections: list[Projection] = []
    for index, layer in enumerate(layers):
        linears = [
            (name, m, linear_shape(m)) for name, m in layer.named_modules() if linear_shape(m)
        ]
        # For structural fallbacks, list each block's projections, then its input side, in order.
        blocks: dict[str | None, list[str]] = {}
        for name, _, _ in linears:
            blocks.setdefault(_block_of(name), []).append(name)
        side_of = {
            name: _side(name, shape, blocks[_block_of(name)], dims) for name, _, shape in linears
        }
        sides: dict[tuple[str | None, str], list[str]] = {}
        for name, _, _ in linears:
            sides.setdefault((_block_of(name), side_of[name]), []).append(name)
        unclassified = []
        for name, module, shape in linears:
            leaf = name.split(".")[-1].lower()
            block = _block_of(name)
            roles = NAME_ROLES.get(leaf)
            if roles is None and leaf in OUTPUT_NAMES:
                roles = {"attn": ("o",), "mlp": ("down",)}.get(block)
            if roles is None:
                side = sides[(block, side_of[name])]
                roles = _roles_by_structure(
                    block, shape, dims, side_of[name], side.index(name), len(side)
                )
            if roles is None:
                unclassified.append(f"{name} {shape[0]}->{shape[1]}")
                continue
            full = f"{layers_path}.{index}.{name}"
            projections.append(
                Projection(full, name, index, roles, shape[0], shape[1], type(module).__name__)
            )
        if unclassified:
            found = ", ".join(f"{n} {s[0]}->{s[1]}" for n, _, s in linears)
            raise ArchitectureError(
                f"cannot classify {len(unclassified)} linear module(s) of {model_type} layer "
                f"{index} ({'; '.join(unclassified)}); linear modules found in "
                f"{layers_path}.{index}: {found}"
            )
    if not projections:
        raise ArchitectureError(
            f"no linear projections found in the decoder layers of {model_type}"
        )
    for layer in range(len(layers)):
        roles = [role for p in projections if p.layer == layer for role in p.roles]
        duplicated = sorted({r for r in roles if roles.count(r) > 1})
        if duplicated:
            names = [
                p.local_name
                for p in projections
                if p.layer == layer and set(p.roles) & set(duplicated)
            ]
            raise ArchitectureError(
                f"ambiguous roles in {model_type} layer {layer}: {', '.join(duplicated)} found on "
                f"several modules ({', '.join(names)})"
            )
    return ArchInfo(model_type, layers_path, len(layers), hidden, tuple(projections))


assert set(r for roles in NAME_ROLES.values() for r in roles) <= set(ROLES)
