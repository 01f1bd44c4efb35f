"""Build a transformers model from any checkpoint reader, so logits can be compared.

Families with a transformers class are built with it under their own names. Remote-code families
(Baichuan, Qwen v1) are never executed: their weights go through the canonical view into the
transformers class that computes the same function (spec `reference_architecture`), so the check
still proves what the converted weights compute.

transformers v5 holds a mixture-of-experts layer's routed experts as 3-D parameters; readers present
the Hub's per-expert tensors, so they are stacked back into those parameters (`InMemoryNames`) from
the spec's `fused_experts` and `aliases` tables, for every MoE family alike.
"""

from __future__ import annotations

import torch

from ascend_common.errors import UserError

from .arch import ArchSpec, canonical_tensors
from .readers import CheckpointReader, TensorInfo


def _config_for(reader: CheckpointReader, spec: ArchSpec):
    import transformers

    raw = dict(reader.config())
    if spec.reference_architecture is None:
        cls = getattr(transformers, spec.architectures[0], None)
        if cls is None:
            raise UserError(f"transformers {transformers.__version__} has no {spec.architectures[0]} class")
        raw.pop("quantization_config", None)
        return cls.config_class.from_dict(raw), cls
    cls = getattr(transformers, spec.reference_architecture)
    c = spec.canonical_config(raw)
    return cls.config_class(
        hidden_size=c["hidden_size"], num_hidden_layers=c["num_hidden_layers"],
        num_attention_heads=c["num_attention_heads"], num_key_value_heads=c["num_key_value_heads"],
        head_dim=c["head_dim"], intermediate_size=c["intermediate_size"], rms_norm_eps=c["rms_norm_eps"],
        rope_theta=c["rope_theta"], vocab_size=c["vocab_size"],
        max_position_embeddings=c["max_position_embeddings"] or 4096,
        tie_word_embeddings=bool(c["tie_word_embeddings"]),
    ), cls


def build_hf_model(reader: CheckpointReader, spec: ArchSpec, dtype: torch.dtype = torch.float32):
    """An eval-mode transformers model holding the reader's weights (whole model in memory)."""
    config, cls = _config_for(reader, spec)
    cfg = spec.canonical_config(reader.config())
    model = cls(config).to(dtype)  # built on CPU so computed buffers (RoPE inv_freq) are real
    state = {}
    in_memory = InMemoryNames(spec)
    for info in reader.tensors():
        if spec.is_ignored(info.name):
            continue
        tensor = reader.load(info)
        tensor = tensor.to(dtype) if tensor.is_floating_point() else tensor
        if spec.reference_architecture is not None:
            state.update(canonical_tensors(spec, cfg, spec.role_of(info.name), tensor))
        elif not in_memory.take(info, tensor):
            state[info.name] = tensor
    state.update(in_memory.tensors())
    missing, unexpected = model.load_state_dict(state, strict=False)
    tied = {"lm_head.weight"} if config.tie_word_embeddings else set()
    if set(missing) - tied or unexpected:
        raise UserError(f"{reader.root}: weights do not fit {cls.__name__}: missing {sorted(set(missing) - tied)[:5]}, "
                        f"unexpected {sorted(unexpected)[:5]}")
    if tied:
        model.tie_weights()
    return model.eval()


class InMemoryNames:
    """Per-expert Hub tensors gathered into transformers v5's in-memory parameters: each fused
    `[E, rows, cols]` parameter is the stack over experts of its parts concatenated along rows
    (gate_up = [gate; up]); a tensor whose role has a v5 alias is stored under the alias."""

    def __init__(self, spec: ArchSpec) -> None:
        self.spec = spec
        self.fused = {role: (pattern, roles) for pattern, roles in spec.fused_experts.items() for role in roles}
        self.alias = {role: pattern for pattern, role in spec.aliases.items()}
        self.parts: dict[str, tuple[tuple[str, ...], dict[tuple[int, str], torch.Tensor]]] = {}
        self.renamed: dict[str, torch.Tensor] = {}

    def take(self, info: TensorInfo, tensor: torch.Tensor) -> bool:
        """Keep `tensor` if it goes into a v5 parameter of another name; False: it keeps its own."""
        match = self.spec.role_of(info.name)
        if match is None:
            return False
        if match.expert is not None and match.role in self.fused:
            pattern, roles = self.fused[match.role]
            name = pattern.replace("{L}", str(match.layer))
            self.parts.setdefault(name, (roles, {}))[1][(match.expert, match.role)] = tensor
            return True
        if match.role in self.alias:
            self.renamed[self.alias[match.role].replace("{L}", str(match.layer))] = tensor
            return True
        return False

    def tensors(self) -> dict[str, torch.Tensor]:
        out = dict(self.renamed)
        for name, (roles, parts) in self.parts.items():
            experts = 1 + max(e for e, _ in parts)
            out[name] = torch.stack([torch.cat([parts[(e, r)] for r in roles]) for e in range(experts)])
        return out
