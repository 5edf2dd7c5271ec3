"""The frozen-prefix activation cache: run the layers below the lowest adapter once per study.

A placement whose lowest adapted layer is ``L`` (``all@last:8``, ``mlp@last:4``, ...) leaves
decoder layers ``0 .. L-1`` frozen and adapter-free. With no dropout active there, the hidden
states entering layer ``L`` are the same for every run, seed and step, so a study computes them
once (:meth:`PrefixCache.build`) and each run executes only layers ``L`` and above
(:meth:`PrefixCache.attached`). Right padding and causal attention make a sequence's states
independent of the rest of its batch, so the cache stores each example on its own, unpadded.

Where the cache is not exact (a decoder layer returns a tuple, dropout below ``L``),
:func:`prefix_supported` says so and callers run the full forward.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from loraplace.placement.arch import ArchInfo
from loraplace.training.precision import autocast_for

__all__ = [
    "PrefixCache",
    "decoder_layers",
    "find_layers_path",
    "lowest_trainable_layer",
    "prefix_supported",
]


def _base_of(model: nn.Module) -> nn.Module:
    """The transformers model inside a PEFT wrapper (the model itself otherwise)."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def decoder_layers(model: nn.Module, layers_path: str) -> nn.ModuleList:
    """The decoder-layer list of ``model`` (PEFT-wrapped or not) at ``layers_path``.

    Args:
        model: A causal LM, or a PEFT model wrapping one.
        layers_path: The dotted path of the layer list in the causal LM
            (:attr:`loraplace.arch.ArchInfo.layers_path`, e.g. ``model.layers``).

    Returns:
        The ``nn.ModuleList`` of decoder layers.

    Raises:
        ValueError: ``layers_path`` does not name a module list in ``model``.
    """
    try:
        layers = _base_of(model).get_submodule(layers_path)
    except AttributeError:
        layers = None
    if not isinstance(layers, nn.ModuleList):
        raise ValueError(f"'{layers_path}' is not a list of decoder layers in this model")
    return layers


def find_layers_path(model: nn.Module) -> str:
    """The dotted path of the decoder-layer list: the module list as long as the config says.

    Args:
        model: A causal LM, or a PEFT model wrapping one.

    Returns:
        The path, e.g. ``model.layers`` or ``transformer.h``.

    Raises:
        ValueError: no module list has the config's number of layers.
    """
    base = _base_of(model)
    config = getattr(base, "config", None)
    counts = [
        getattr(config, name, None) for name in ("num_hidden_layers", "n_layer", "num_layers")
    ]
    for name, module in base.named_modules():
        if isinstance(module, nn.ModuleList) and len(module) > 0 and len(module) in counts:
            return name
    raise ValueError(f"cannot find the decoder layers of {type(base).__name__}")


def lowest_trainable_layer(model: nn.Module, layers_path: str) -> int | None:
    """Index of the lowest decoder layer holding a trainable parameter (None when none does).

    Args:
        model: A (PEFT-wrapped) causal LM.
        layers_path: The dotted path of its decoder-layer list.

    Returns:
        The layer index, or None when no decoder layer has a trainable parameter.
    """
    for index, layer in enumerate(decoder_layers(model, layers_path)):
        if any(p.requires_grad for p in layer.parameters()):
            return index
    return None


def _adapted_below(layers: nn.ModuleList, layer: int) -> list[str]:
    """Names of trainable parameters or adapter modules in layers ``0 .. layer-1``."""
    found = []
    for index in range(layer):
        for name, _ in layers[index].named_modules():
            if "lora_" in name.rsplit(".", 1)[-1]:
                found.append(f"{index}.{name}")
        for name, param in layers[index].named_parameters():
            if param.requires_grad:
                found.append(f"{index}.{name}")
    return found


def _dropout_problems(model: nn.Module, layers_path: str, layer: int) -> list[str]:
    """Dropout that may be active in training mode anywhere outside layers ``layer`` and above."""
    above = tuple(
        f"{layers_path}.{i}." for i in range(layer, len(decoder_layers(model, layers_path)))
    )
    problems = []
    for name, module in _base_of(model).named_modules():
        if (name + ".").startswith(above):
            continue
        if isinstance(module, nn.modules.dropout._DropoutNd) and module.p > 0:
            problems.append(f"{name} (p={module.p})")
            continue
        # Attention dropout is often a float attribute passed to a functional call.
        for attr, value in vars(module).items():
            lowered = attr.lower()
            if ("dropout" in lowered or "pdrop" in lowered) and not isinstance(value, bool):
                if isinstance(value, (int, float)) and value > 0:
                    problems.append(f"{name}.{attr}={value}")
    return problems


class _Stop(Exception):
    """Raised by a hook to end a forward pass once the wanted activations are captured."""


def _layer_input(args: tuple, kwargs: dict) -> torch.Tensor:
    return args[0] if args else kwargs["hidden_states"]


def _returns_plain_tensor(
    model: nn.Module, layers: nn.ModuleList, dtype: torch.dtype
) -> tuple[bool, str]:
    """Run two tokens through layer 0 and look at what the layer takes and returns."""
    seen: dict = {}

    def hook(module, args, kwargs, output):
        seen["input"] = _layer_input(args, kwargs) if (args or "hidden_states" in kwargs) else None
        seen["output"] = output
        raise _Stop

    handle = layers[0].register_forward_hook(hook, with_kwargs=True)
    was_training = model.training
    model.eval()
    try:
        device = next(model.parameters()).device
        with torch.inference_mode(), autocast_for(device.type, dtype):
            model(input_ids=torch.zeros((1, 2), dtype=torch.long, device=device))
    except _Stop:
        pass
    except Exception as exc:  # noqa: BLE001 - any failure means "not supported", with the reason
        return False, f"a probe forward pass failed ({type(exc).__name__}: {exc})"
    finally:
        handle.remove()
        model.train(was_training)
    if "output" not in seen:
        return False, "the model's forward never called decoder layer 0"
    given, output = seen["input"], seen["output"]
    if not isinstance(output, torch.Tensor):
        return False, f"decoder layers return {type(output).__name__}, not a plain tensor"
    if not isinstance(given, torch.Tensor) or given.shape != output.shape:
        return False, "decoder layers do not take and return hidden states of one shape"
    return True, ""


def prefix_supported(
    model: nn.Module, arch: ArchInfo, layer: int, *, dtype: torch.dtype = torch.float32
) -> tuple[bool, str]:
    """Whether the frozen-prefix cache is exact for ``model`` with layers ``0 .. layer-1`` frozen.

    Exact requires decoder layers that take and return a plain hidden-state tensor (checked by
    running two tokens through layer 0, not assumed from the architecture's name), and no
    dropout that training mode would activate below ``layer`` (``nn.Dropout`` modules with
    ``p > 0``, attention or embedding dropout rates stored as attributes). Trainable parameters
    below ``layer`` are refused by :meth:`PrefixCache.attached` itself.

    Args:
        model: The base causal LM (or a PEFT model around it).
        arch: Its classifier result (for the decoder-layer path and count).
        layer: The lowest adapted layer ``L``.
        dtype: The runs' compute dtype (the probe runs as they do: bf16 weights need autocast).

    Returns:
        ``(True, "")`` where the cache is exact, else ``(False, reason)``.
    """
    if not 0 < layer < arch.num_layers:
        return False, f"layer {layer} leaves no frozen prefix among {arch.num_layers} layers"
    layers = decoder_layers(model, arch.layers_path)
    dropout = _dropout_problems(model, arch.layers_path, layer)
    if dropout:
        return False, f"dropout is active below layer {layer} in training: {', '.join(dropout)}"
    return _returns_plain_tensor(model, layers, dtype)


@dataclass(eq=False)
class PrefixCache:
    """Hidden states entering decoder layer ``layer``, one ``[length, hidden]`` slice per feature.

    Attributes:
        layer: The decoder layer whose input is cached.
        layers_path: The dotted path of the decoder-layer list in the causal LM.
        states: Every feature's states, concatenated along the token axis.
        offsets: Feature ``i`` occupies ``states[offsets[i]:offsets[i + 1]]``.
    """

    layer: int
    layers_path: str
    states: torch.Tensor
    offsets: list[int]
    _selection: list[int] | None = field(default=None, repr=False)

    # C901: one pass over the batches, with each cache condition in place.
    @classmethod
    @torch.no_grad()
    def build(  # noqa: C901
        cls,
        model: nn.Module,
        features: Sequence[dict],
        layer: int,
        *,
        device: str,
        dtype: torch.dtype,
        batch_size: int,
        layers_path: str | None = None,
        progress=None,
    ) -> PrefixCache:
        """Run the frozen base once and keep the hidden states entering layer ``layer``.

        Each batch stops at layer ``layer`` (nothing above it or the LM head runs). States are
        kept in the dtype the residual stream has there (float32, in bf16 runs too: see
        :func:`~loraplace.training.precision.store_frozen`) on ``device``.

        Args:
            model: The base causal LM (or a PEFT model with no adapter below ``layer``).
            features: Tokenized examples (``input_ids``); the cache is tied to this list.
            layer: The lowest adapted layer ``L`` (``0 < L < number of layers``).
            device: Where the model is and the cache is kept.
            dtype: Compute dtype (bf16 turns on bf16 autocast).
            batch_size: Sequences per forward pass.
            layers_path: The dotted path of the decoder-layer list
                (:attr:`loraplace.arch.ArchInfo.layers_path`); found from the config's layer
                count when not given.
            progress: Optional tqdm-like bar, advanced by the examples of each batch.

        Returns:
            The cache.

        Raises:
            ValueError: ``layer`` is out of range, or layers below it hold adapters.
        """
        layers_path = layers_path or find_layers_path(model)
        layers = decoder_layers(model, layers_path)
        if not 0 < layer < len(layers):
            raise ValueError(f"layer must be in [1, {len(layers) - 1}], got {layer}")
        adapted = _adapted_below(layers, layer)
        if adapted:
            raise ValueError(f"layers below {layer} hold adapters: {', '.join(adapted[:4])}")
        lengths = [len(f["input_ids"]) for f in features]
        offsets = [0]
        for n in lengths:
            offsets.append(offsets[-1] + n)
        captured: dict = {}

        def hook(module, args, kwargs):
            captured["states"] = _layer_input(args, kwargs)
            raise _Stop

        states = None
        order = sorted(range(len(features)), key=lambda i: -lengths[i])
        handle = layers[layer].register_forward_pre_hook(hook, with_kwargs=True)
        was_training = model.training
        model.eval()
        try:
            for start in range(0, len(order), batch_size):
                batch = order[start : start + batch_size]
                width = lengths[batch[0]]
                # Right padding with id 0: padded positions never reach a kept position.
                ids = torch.zeros((len(batch), width), dtype=torch.long)
                mask = torch.zeros((len(batch), width), dtype=torch.long)
                for row, i in enumerate(batch):
                    ids[row, : lengths[i]] = torch.tensor(features[i]["input_ids"])
                    mask[row, : lengths[i]] = 1
                try:
                    with autocast_for(device, dtype):
                        model(
                            input_ids=ids.to(device),
                            attention_mask=mask.to(device),
                            use_cache=False,
                        )
                except _Stop:
                    pass
                hidden = captured.pop("states")
                if states is None:
                    states = hidden.new_empty((offsets[-1], hidden.shape[-1]))
                for row, i in enumerate(batch):
                    states[offsets[i] : offsets[i + 1]] = hidden[row, : lengths[i]]
                if progress is not None:
                    progress.update(len(batch))
        finally:
            handle.remove()
            model.train(was_training)
        if states is None:
            states = torch.empty((0, 0), device=device)
        return cls(layer, layers_path, states, offsets)

    def __len__(self) -> int:
        return len(self.offsets) - 1

    @property
    def nbytes(self) -> int:
        """Memory held by the cached states, in bytes."""
        return self.states.numel() * self.states.element_size()

    @property
    def lengths(self) -> list[int]:
        return [b - a for a, b in zip(self.offsets, self.offsets[1:])]

    def check(self, features: Sequence[dict]) -> None:
        """Raise ``ValueError`` unless ``features`` have this cache's sequence lengths."""
        if [len(f["input_ids"]) for f in features] != self.lengths:
            raise ValueError(
                "the prefix cache was built for other features "
                f"({len(self)} sequences cached, {len(features)} given)"
            )

    def select(self, indices: Sequence[int]) -> None:
        """Set the features (indices into the cached list) of the next forward pass's batch."""
        self._selection = list(indices)

    def batch_states(self, width: int) -> torch.Tensor:
        """The selected features' states, right-padded with zeros to ``width`` tokens."""
        if self._selection is None:
            raise RuntimeError("PrefixCache.select must be called before each forward pass")
        out = self.states.new_zeros((len(self._selection), width, self.states.shape[-1]))
        for row, i in enumerate(self._selection):
            out[row, : self.offsets[i + 1] - self.offsets[i]] = self.states[
                self.offsets[i] : self.offsets[i + 1]
            ]
        return out

    @contextlib.contextmanager
    def attached(self, model: nn.Module) -> Iterator[PrefixCache]:
        """Within the block, ``model`` starts at layer ``layer`` from the cached states.

        Decoder layers ``0 .. layer-1`` are replaced by light stand-ins (layer 0 returns the
        selected features' cached states, the others pass them through) and restored on exit,
        so adapter module names, which hold layer indices, do not change. The embedding, the
        position embeddings and the attention mask are still computed by the model as usual.
        Call :meth:`select` before each forward pass.

        Args:
            model: A (PEFT-wrapped) causal LM with no adapter below ``layer``.

        Yields:
            This cache.

        Raises:
            ValueError: layers below ``layer`` hold trainable parameters or adapters.
        """
        layers = decoder_layers(model, self.layers_path)
        adapted = _adapted_below(layers, self.layer)
        if adapted:
            raise ValueError(
                f"the prefix cache skips layers 0-{self.layer - 1}, but they hold adapters or "
                f"trainable parameters: {', '.join(adapted[:4])}"
            )
        originals = [layers[i] for i in range(self.layer)]
        for i, original in enumerate(originals):
            layers[i] = _CachedInput(self, original) if i == 0 else _PassThrough(original)
        try:
            yield self
        finally:
            for i, original in enumerate(originals):
                layers[i] = original
            self._selection = None


class _PassThrough(nn.Module):
    """Stands in for a skipped decoder layer: returns the hidden states it is given."""

    def __init__(self, original: nn.Module):
        super().__init__()
        # Kept outside the module tree: the stand-in must own no parameters.
        self.__dict__["_original"] = original

    def __getattr__(self, name: str):
        # Models read per-layer attributes in their layer loop (e.g. ``attention_type``).
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(self.__dict__["_original"], name)

    def forward(self, *args, **kwargs) -> torch.Tensor:
        return _layer_input(args, kwargs)


class _CachedInput(_PassThrough):
    """Stands in for decoder layer 0: returns the cached states of the selected features."""

    def __init__(self, cache: PrefixCache, original: nn.Module):
        super().__init__(original)
        self.__dict__["_cache"] = cache

    def forward(self, *args, **kwargs) -> torch.Tensor:
        hidden = _layer_input(args, kwargs)
        states = self.__dict__["_cache"].batch_states(hidden.shape[1])
        if states.shape[0] != hidden.shape[0]:
            raise RuntimeError(
                f"prefix cache selection has {states.shape[0]} sequences, the batch has "
                f"{hidden.shape[0]}"
            )
        return states.to(hidden.device)
