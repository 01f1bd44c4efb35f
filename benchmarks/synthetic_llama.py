"""The generated checkpoint of bench_convert: a Llama with 7B-shaped layers, written without torch's help.

A real 7B checkpoint is too large to ship or download for a benchmark, and building one with
transformers would hold every tensor in memory; this one is written tensor by tensor straight into
safetensors files (the header first, known from the shapes, then the data in row chunks), so
generating a multi-GB source costs little memory.  The values are seeded by tensor name only, so
every sharding of the model holds the same bytes: the N-shard and 2N-shard cases differ in layout
alone.  torch and safetensors are imported inside the functions that need them: the measuring
parent imports this module and must stay free of torch.
"""

from __future__ import annotations

import json
import os
import shutil
import struct
import time
import zlib
from pathlib import Path
from typing import Any, BinaryIO

from process_measure import GB

#: A tensor of the generated model: its name and shape.
TensorSpec = tuple[str, tuple[int, ...]]

#: 7B-shaped Llama layers (Llama-2-7B's hidden, intermediate, heads and vocab).
HIDDEN, INTERMEDIATE, HEADS, KV_HEADS, VOCAB = 4096, 11008, 32, 32, 32000
HEAD_DIM = HIDDEN // HEADS
BF16 = 2
SEED = 20240611


def layer_tensors(layer: int) -> list[TensorSpec]:
    """The nine tensors of one Llama decoder layer, in the order transformers saves them."""
    p = f"model.layers.{layer}."
    kv = KV_HEADS * HEAD_DIM
    return [
        (p + "input_layernorm.weight", (HIDDEN,)),
        (p + "self_attn.q_proj.weight", (HIDDEN, HIDDEN)),
        (p + "self_attn.k_proj.weight", (kv, HIDDEN)),
        (p + "self_attn.v_proj.weight", (kv, HIDDEN)),
        (p + "self_attn.o_proj.weight", (HIDDEN, HIDDEN)),
        (p + "post_attention_layernorm.weight", (HIDDEN,)),
        (p + "mlp.gate_proj.weight", (INTERMEDIATE, HIDDEN)),
        (p + "mlp.up_proj.weight", (INTERMEDIATE, HIDDEN)),
        (p + "mlp.down_proj.weight", (HIDDEN, INTERMEDIATE)),
    ]


def model_tensors(layers: int) -> list[TensorSpec]:
    """Every tensor of a ``layers``-layer model: embeddings, the layers, the final norm and lm_head."""
    out = [("model.embed_tokens.weight", (VOCAB, HIDDEN))]
    for i in range(layers):
        out += layer_tensors(i)
    out += [("model.norm.weight", (HIDDEN,)), ("lm_head.weight", (VOCAB, HIDDEN))]
    return out


def numel(shape: tuple[int, ...]) -> int:
    """Elements of a tensor of ``shape``: sizes are computed from the shapes, never from tensors."""
    n = 1
    for d in shape:
        n *= d
    return n


def layers_for(size_bytes: int) -> int:
    """The fewest layers whose bf16 checkpoint holds at least `size_bytes`."""
    layers = 1
    while sum(numel(s) for _, s in model_tensors(layers)) * BF16 < size_bytes:
        layers += 1
    return layers


def split_shards(tensors: list[TensorSpec], shards: int) -> list[list[TensorSpec]]:
    """Contiguous groups of about equal bytes; exactly `shards` non-empty groups."""
    if shards > len(tensors):
        raise SystemExit(f"--shards {shards}: the model has only {len(tensors)} tensors")
    total = sum(numel(s) for _, s in tensors)
    groups: list[list[TensorSpec]] = [[] for _ in range(shards)]
    start = 0
    for t in tensors:
        groups[min(shards - 1, start * shards // total)].append(t)
        start += numel(t[1])
    if all(groups):
        return groups
    per = -(-len(tensors) // shards)  # fall back to equal tensor counts
    return [tensors[i * per:(i + 1) * per] for i in range(shards) if tensors[i * per:(i + 1) * per]]


def write_tensor_values(f: BinaryIO, name: str, shape: tuple[int, ...]) -> None:
    """Seeded random bf16 values, streamed in row chunks (at most ~64 MB of float32 at a time).

    The seed depends on the name only, so every sharding of the model holds the same bytes. Linear
    weights are N(0, 0.02) (far inside fp16 range), norms 1 + N(0, 0.02)."""
    import torch

    gen = torch.Generator().manual_seed(SEED ^ zlib.crc32(name.encode()))
    rows = shape[0]
    cols = numel(shape[1:]) if len(shape) > 1 else 1
    step = max(1, (16 << 20) // cols)
    for r in range(0, rows, step):
        n = min(step, rows - r)
        chunk = torch.randn((n, cols), generator=gen).mul_(0.02)
        if name.endswith("norm.weight"):
            chunk.add_(1.0)
        f.write(chunk.to(torch.bfloat16).view(torch.uint8).numpy().tobytes())


def write_safetensors(path: Path, tensors: list[TensorSpec]) -> None:
    """One safetensors file written tensor by tensor: header first (known from the shapes), then data."""
    header: dict[str, Any] = {"__metadata__": {"format": "pt"}}
    offset = 0
    for name, shape in tensors:
        nbytes = numel(shape) * BF16
        header[name] = {"dtype": "BF16", "shape": list(shape), "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(raw)) + raw)
        for name, shape in tensors:
            write_tensor_values(f, name, shape)
        if f.tell() != 8 + len(raw) + offset:
            raise RuntimeError(f"{path}: wrote {f.tell()} bytes, expected {8 + len(raw) + offset}")


def llama_config(layers: int) -> dict[str, Any]:
    """config.json of the generated model: what transformers (the baseline) needs to load it."""
    return {
        "architectures": ["LlamaForCausalLM"], "model_type": "llama", "torch_dtype": "bfloat16",
        "hidden_size": HIDDEN, "intermediate_size": INTERMEDIATE, "num_attention_heads": HEADS,
        "num_key_value_heads": KV_HEADS, "head_dim": HEAD_DIM, "num_hidden_layers": layers,
        "vocab_size": VOCAB, "max_position_embeddings": 4096, "rms_norm_eps": 1e-5, "rope_theta": 10000.0,
        "hidden_act": "silu", "initializer_range": 0.02, "attention_bias": False, "mlp_bias": False,
        "tie_word_embeddings": False, "bos_token_id": 1, "eos_token_id": 2, "use_cache": True,
    }


def generate(out: Path, layers: int, shards: int, tensors: list[TensorSpec] | None = None,
             config: dict[str, Any] | None = None) -> None:
    """Write the checkpoint into a temp sibling, read every shard back, then publish it as ``out``.

    ``tensors`` and ``config`` default to the Llama's; another generated family (synthetic_moe.py)
    passes its own. The ``.complete`` marker is written last, so an interrupted run is generated
    again, never reused.
    """
    workdir = out.parent
    tmp = workdir / f".{out.name}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.rmtree(out, ignore_errors=True)
    tmp.mkdir(parents=True)
    tensors = tensors if tensors is not None else model_tensors(layers)
    groups = split_shards(tensors, shards)
    names = [f"model-{i:05d}-of-{len(groups):05d}.safetensors" for i in range(1, len(groups) + 1)]
    t0 = time.perf_counter()
    print(f"generating {out.name}: {layers} layers, {len(tensors)} tensors, "
          f"{sum(numel(s) for _, s in tensors) * BF16 / GB:.2f} GB in {len(groups)} shards ...", flush=True)
    weight_map: dict[str, str] = {}
    for name, group in zip(names, groups):
        write_safetensors(tmp / name, group)
        weight_map.update({t: name for t, _ in group})
    total = sum(numel(s) for _, s in tensors) * BF16
    (tmp / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2) + "\n")
    (tmp / "config.json").write_text(json.dumps(config or llama_config(layers), indent=2) + "\n")
    # Read back with safetensors itself: every header parses, and one tensor per shard loads.
    from safetensors import safe_open

    for name, group in zip(names, groups):
        with safe_open(str(tmp / name), framework="pt") as f:
            keys = set(f.keys())
            if keys != {t for t, _ in group}:
                raise RuntimeError(f"{tmp / name}: holds {sorted(keys)[:3]}..., not the planned tensors")
            small = min(group, key=lambda t: numel(t[1]))
            if tuple(f.get_tensor(small[0]).shape) != small[1]:
                raise RuntimeError(f"{tmp / name}: {small[0]} has the wrong shape")
    (tmp / ".complete").write_text(json.dumps({"layers": layers, "shards": len(groups), "bytes": total}) + "\n")
    os.replace(tmp, out)
    print(f"  done in {time.perf_counter() - t0:.1f} s", flush=True)
