"""Trace one decoder layer of each kind, count every kind as often as the model has it.

DeepSeek-V3 has 61 decoder layers, GLM-4.5 92: exporting them all takes ~0.3 s of one core per layer
(17 s for V3's prefill alone) and finds nothing the first layer of each kind does not show, because
layers of one kind run the same code on the same shapes. So a model built from config.json keeps the
shortest prefix of its layers that holds one of each kind (V3: its 3 dense layers and the first MoE
layer), and each op a layer emits is counted once per real layer of its kind (`LayerSample.weight`):
op counts, fusion counts and the op list are those of the whole model.

A layer's kind is everything that could change what it runs: its submodules' classes, its parameters'
shapes and dtypes, and its submodules' plain attributes (a sliding window, an attention type), less its
index. Models of `SAMPLE_ABOVE` layers or fewer are traced whole.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch.fx import Node

SAMPLE_ABOVE = 8  # decoder layers; fixtures and small models are traced layer by layer
_PLAIN = (int, float, str, bool, type(None))
_INDEX_ATTRS = {"layer_idx", "layer_id", "layer_number", "training"}


@dataclass(frozen=True)
class LayerSample:
    """Which decoder layers were traced, and how many real layers each stands for."""

    path: str  # the decoder layers' ModuleList in the model: "model.layers"
    total: int  # layers in the model
    kinds: int  # distinct kinds of layer
    weights: dict[int, int]  # traced layer index -> real layers it counts for (sums to `total`)

    @property
    def traced(self) -> int:
        return len(self.weights)

    def weight(self, node: Node) -> int:
        """How many real layers `node` stands for: its layer's weight, 1 outside the layers."""
        pattern = re.compile(rf"^{re.escape(self.path)}\.(\d+)(?:\.|$)")
        for path, _ in (node.meta.get("nn_module_stack") or {}).values():
            match = pattern.match(path or "")
            if match:
                return self.weights.get(int(match[1]), 1)
        return 1


def decoder_layers(model: torch.nn.Module) -> tuple[str, torch.nn.ModuleList] | None:
    """The ModuleList holding the model's `num_hidden_layers` decoder layers, by its path."""
    total = getattr(model.config.get_text_config(), "num_hidden_layers", None)
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.ModuleList) and len(module) == total and name.split(".")[-1] == "layers":
            return name, module
    return None


def kind(layer: torch.nn.Module) -> tuple:
    """What a layer runs, as a hashable value: equal for two layers that trace to the same ops."""
    modules = tuple((name, type(m).__name__, tuple(sorted(
        (k, v) for k, v in vars(m).items() if isinstance(v, _PLAIN) and k not in _INDEX_ATTRS and not k.startswith("_"))))
        for name, m in layer.named_modules())
    params = tuple((name, tuple(p.shape), p.dtype) for name, p in layer.named_parameters())
    return modules, params


def sample_layers(model: torch.nn.Module) -> LayerSample | None:
    """Cut `model`'s decoder layers (in place) to the shortest prefix holding each kind of layer, and
    its config's per-layer lists (`layer_types`, ...) with them. None, and the model left whole, when
    it has `SAMPLE_ABOVE` layers or fewer or the prefix is the whole model."""
    found = decoder_layers(model)
    if found is None:
        return None
    path, layers = found
    total = len(layers)
    kinds = [kind(layer) for layer in layers]
    first = {}
    for index, k in enumerate(kinds):
        first.setdefault(k, index)
    keep = max(first.values()) + 1
    if total <= SAMPLE_ABOVE or keep == total:
        return None
    weights = {index: 1 for index in range(keep)}
    last = {k: index for index, k in enumerate(kinds[:keep])}  # the traced layer that counts the rest of its kind
    for k in kinds[keep:]:
        weights[last[k]] += 1
    parent_path, _, attr = path.rpartition(".")
    parent = model.get_submodule(parent_path) if parent_path else model
    setattr(parent, attr, torch.nn.ModuleList(list(layers)[:keep]))
    text = model.config.get_text_config()
    for name, value in list(vars(text).items()):
        if isinstance(value, list) and len(value) == total:
            setattr(text, name, value[:keep])
    text.num_hidden_layers = keep
    return LayerSample(path, total, len(first), weights)


def unit(_: Node) -> int:
    return 1


Weight = Callable[[Node], int]
