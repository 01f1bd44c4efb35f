#!/usr/bin/env python
"""Block-FP8 DeepSeek-V3-shaped checkpoints → bf16 and → W8A8_DYNAMIC: time against `cp -r`, peak RSS at two sizes.

    python benchmarks/bench_convert_fp8.py [--workdir /tmp/bench-fp8] [--layers 2 4] [--experts 8] [--reps 1] [--keep]

Source: a generated checkpoint in DeepSeek-V3/R1's release format (`quant_method: fp8`,
`weight_block_size: [128, 128]`, every linear weight float8_e4m3fn with a float32
`weight_scale_inv` per 128 x 128 block, edge blocks cut short as in kv_a_proj_with_mqa's 576 rows)
and DeepSeek-V3's layer shapes: hidden 7168, MLA with q_lora_rank 1536, kv_lora_rank 512, rope 64,
nope 128, v 128 and 128 heads (o_proj 7168 x 16384), layer 0 dense with intermediate 18432, the
others MoE with --experts routed experts of moe_intermediate 2048 plus one shared expert, a router
and its float32 e_score_correction_bias; an 8192-token vocabulary instead of 129,280 so the size is
in the layers. Each layer is 583 MB (dense or MoE with 8 experts); 2 layers are 1.40 GB, 4 are
2.57 GB. Written tensor by tensor in row chunks (random finite e4m3 bytes, random scales), so
generating it costs little memory; one shard per layer plus the embeddings', with an index.

Systems, for each size, each in its own fresh child (process_measure.py): `cp -r SRC OUT` (the
baseline), `cp -r SRC OUT && sync` (information: convert fsyncs what it writes, cp does not),
`ascendkit convert SRC OUT --dtype bfloat16` and `ascendkit convert SRC OUT --quantize
w8a8-dynamic`, both `--engine none` (the generated source has no tokenizer, which preflight would
refuse; its check reads headers only); the page cache warmed before each run, the output removed and synced after.

Flat: the larger checkpoint's peak RSS at most FLAT_EXTRA above the smaller's, for each convert
(the largest tensor, 18432 x 7168, is in both). Results: a table on stdout and
`<workdir>/bench_convert_fp8.json`; exit 1 if the peak RSS is not flat.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import struct
import subprocess
import sys
import time
import zlib
from pathlib import Path
from typing import Any

from process_measure import GB, MB, drop, measure, warm

ROOT = Path(__file__).resolve().parents[1]
FLAT_EXTRA = 100 * MB

HIDDEN, HEADS, Q_LORA, KV_LORA, ROPE, NOPE, V = 7168, 128, 1536, 512, 64, 128, 128
DENSE_INTERMEDIATE, MOE_INTERMEDIATE, VOCAB, BLOCK = 18432, 2048, 8192, 128
SEED = 20261203
#: (safetensors dtype code, bytes per element)
DTYPES = {"F8_E4M3": 1, "BF16": 2, "F32": 4}

TensorSpec = tuple[str, tuple[int, ...], str]


def numel(shape: tuple[int, ...]) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


def fp8_linear(name: str, rows: int, cols: int) -> list[TensorSpec]:
    """A DeepSeek FP8 linear: the e4m3 weight and its float32 scale per 128 x 128 block."""
    return [(name, (rows, cols), "F8_E4M3"),
            (name + "_scale_inv", (-(-rows // BLOCK), -(-cols // BLOCK)), "F32")]


def layer_tensors(layer: int, experts: int) -> list[TensorSpec]:
    """One DeepSeek-V3 decoder layer: MLA, then a dense MLP (layer 0) or the MoE block."""
    p = f"model.layers.{layer}."
    out: list[TensorSpec] = [(p + "input_layernorm.weight", (HIDDEN,), "BF16"),
                             (p + "post_attention_layernorm.weight", (HIDDEN,), "BF16"),
                             (p + "self_attn.q_a_layernorm.weight", (Q_LORA,), "BF16"),
                             (p + "self_attn.kv_a_layernorm.weight", (KV_LORA,), "BF16")]
    out += fp8_linear(p + "self_attn.q_a_proj.weight", Q_LORA, HIDDEN)
    out += fp8_linear(p + "self_attn.q_b_proj.weight", HEADS * (NOPE + ROPE), Q_LORA)
    out += fp8_linear(p + "self_attn.kv_a_proj_with_mqa.weight", KV_LORA + ROPE, HIDDEN)
    out += fp8_linear(p + "self_attn.kv_b_proj.weight", HEADS * (NOPE + V), KV_LORA)
    out += fp8_linear(p + "self_attn.o_proj.weight", HIDDEN, HEADS * V)

    def mlp(prefix: str, width: int) -> list[TensorSpec]:
        return (fp8_linear(prefix + "gate_proj.weight", width, HIDDEN) + fp8_linear(prefix + "up_proj.weight", width, HIDDEN)
                + fp8_linear(prefix + "down_proj.weight", HIDDEN, width))

    if layer == 0:
        return out + mlp(p + "mlp.", DENSE_INTERMEDIATE)
    out += [(p + "mlp.gate.weight", (experts, HIDDEN), "BF16"), (p + "mlp.gate.e_score_correction_bias", (experts,), "F32")]
    for e in range(experts):
        out += mlp(p + f"mlp.experts.{e}.", MOE_INTERMEDIATE)
    return out + mlp(p + "mlp.shared_experts.", MOE_INTERMEDIATE)


def model_shards(layers: int, experts: int) -> list[list[TensorSpec]]:
    """Shards as DeepSeek's release groups them: by layer, the embeddings and head in their own."""
    head = [("model.embed_tokens.weight", (VOCAB, HIDDEN), "BF16"), ("model.norm.weight", (HIDDEN,), "BF16"),
            ("lm_head.weight", (VOCAB, HIDDEN), "BF16")]
    return [head] + [layer_tensors(i, experts) for i in range(layers)]


def nbytes(specs: list[TensorSpec]) -> int:
    return sum(numel(shape) * DTYPES[dtype] for _, shape, dtype in specs)


def deepseek_config(layers: int, experts: int) -> dict[str, Any]:
    return {
        "architectures": ["DeepseekV3ForCausalLM"], "model_type": "deepseek_v3", "torch_dtype": "bfloat16",
        "hidden_size": HIDDEN, "intermediate_size": DENSE_INTERMEDIATE, "moe_intermediate_size": MOE_INTERMEDIATE,
        "num_attention_heads": HEADS, "num_key_value_heads": HEADS, "num_hidden_layers": layers,
        "q_lora_rank": Q_LORA, "kv_lora_rank": KV_LORA, "qk_rope_head_dim": ROPE, "qk_nope_head_dim": NOPE,
        "v_head_dim": V, "n_routed_experts": experts, "n_shared_experts": 1, "num_experts_per_tok": 4,
        "n_group": 4, "topk_group": 2, "topk_method": "noaux_tc", "scoring_func": "sigmoid", "norm_topk_prob": True,
        "routed_scaling_factor": 2.5, "first_k_dense_replace": 1, "moe_layer_freq": 1,
        "num_nextn_predict_layers": 0, "vocab_size": VOCAB, "max_position_embeddings": 4096,
        "rms_norm_eps": 1e-6, "rope_theta": 10000.0, "hidden_act": "silu", "attention_bias": False,
        "tie_word_embeddings": False, "bos_token_id": 0, "eos_token_id": 1,
        "quantization_config": {"activation_scheme": "dynamic", "fmt": "e4m3", "quant_method": "fp8",
                                "weight_block_size": [BLOCK, BLOCK]},
    }


def write_values(f, name: str, shape: tuple[int, ...], dtype: str) -> None:
    """Seeded values in row chunks: finite e4m3 bytes (no 0x7F/0xFF, e4m3fn's NaN), scales in
    [1e-5, 1.1e-4] (weights up to ~0.05), bf16 N(0, 0.02), norms 1 + N(0, 0.02)."""
    import torch

    gen = torch.Generator().manual_seed(SEED ^ zlib.crc32(name.encode()))
    rows, cols = shape[0], numel(shape[1:])
    step = max(1, (32 << 20) // max(cols, 1))
    for r in range(0, rows, step):
        n = min(step, rows - r)
        if dtype == "F8_E4M3":
            chunk = torch.randint(0, 127, (n, cols), generator=gen, dtype=torch.uint8)
            chunk |= torch.randint(0, 2, (n, cols), generator=gen, dtype=torch.uint8) << 7
        elif dtype == "F32":
            chunk = torch.rand((n, cols), generator=gen).mul_(1e-4).add_(1e-5)
        else:
            chunk = torch.randn((n, cols), generator=gen).mul_(0.02)
            if name.endswith("norm.weight"):
                chunk.add_(1.0)
            chunk = chunk.to(torch.bfloat16)
        f.write(chunk.contiguous().view(torch.uint8).numpy().tobytes())


def write_shard(path: Path, specs: list[TensorSpec]) -> None:
    header: dict[str, Any] = {"__metadata__": {"format": "pt"}}
    offset = 0
    for name, shape, dtype in specs:
        size = numel(shape) * DTYPES[dtype]
        header[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [offset, offset + size]}
        offset += size
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(raw)) + raw)
        for name, shape, dtype in specs:
            write_values(f, name, shape, dtype)
        if f.tell() != 8 + len(raw) + offset:
            raise RuntimeError(f"{path}: wrote {f.tell()} bytes, expected {8 + len(raw) + offset}")


def generate(out: Path, layers: int, experts: int) -> None:
    """Write into a temp sibling, read one tensor of each shard back, then publish as `out`."""
    tmp = out.parent / f".{out.name}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    shards = model_shards(layers, experts)
    names = [f"model-{i:05d}-of-{len(shards):05d}.safetensors" for i in range(1, len(shards) + 1)]
    t0 = time.perf_counter()
    total = sum(nbytes(s) for s in shards)
    print(f"generating {out.name}: {layers} layers, {total / GB:.2f} GB in {len(shards)} shards ...", flush=True)
    for name, specs in zip(names, shards):
        write_shard(tmp / name, specs)
    weight_map = {t: name for name, specs in zip(names, shards) for t, _, _ in specs}
    (tmp / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2) + "\n")
    (tmp / "config.json").write_text(json.dumps(deepseek_config(layers, experts), indent=2) + "\n")
    from safetensors import safe_open

    for name, specs in zip(names, shards):
        with safe_open(str(tmp / name), framework="pt") as f:
            if set(f.keys()) != {t for t, _, _ in specs}:
                raise RuntimeError(f"{tmp / name}: not the planned tensors")
    (tmp / ".complete").write_text(json.dumps({"layers": layers, "experts": experts, "bytes": total}) + "\n")
    shutil.rmtree(out, ignore_errors=True)
    os.replace(tmp, out)
    print(f"  done in {time.perf_counter() - t0:.1f} s", flush=True)


def generated(workdir: Path, layers: int, experts: int) -> Path:
    out = workdir / f"gen-deepseek-fp8-L{layers}-E{experts}"
    if not (out / ".complete").is_file():
        subprocess.run([sys.executable, __file__, "--generate", str(out), str(layers), str(experts)], check=True)
    return out


SYSTEMS: dict[str, list[str]] = {
    "cp -r": ["cp", "-r", "{src}", "{out}"],
    "cp -r + sync": ["sh", "-c", 'cp -r "$0" "$1" && sync "$1"/*', "{src}", "{out}"],
    "convert → bf16": [sys.executable, "-m", "ascendkit", "convert", "{src}", "{out}", "--dtype", "bfloat16",
                       "--engine", "none", "--no-progress", "--json"],
    "convert → w8a8-dynamic": [sys.executable, "-m", "ascendkit", "convert", "{src}", "{out}", "--quantize",
                               "w8a8-dynamic", "--engine", "none", "--no-progress", "--json"],
}


def main() -> int:
    if len(sys.argv) == 5 and sys.argv[1] == "--generate":  # internal: the generator child
        generate(Path(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]))
        return 0
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/bench-fp8"), help="sources, outputs, results")
    ap.add_argument("--layers", type=int, nargs=2, default=[2, 4], help="layers of the smaller and larger source")
    ap.add_argument("--experts", type=int, default=8, help="routed experts per MoE layer (8: 583 MB a layer)")
    ap.add_argument("--reps", type=int, default=1, help="runs of each system per size (interleaved)")
    ap.add_argument("--keep", action="store_true", help="keep the generated sources (default: removed at the end)")
    args = ap.parse_args()
    workdir = args.workdir.resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    results: dict[str, dict[str, Any]] = {}
    sources = [generated(workdir, layers, args.experts) for layers in args.layers]
    for src in sources:
        src_bytes = sum(p.stat().st_size for p in src.glob("*.safetensors"))
        runs: dict[str, list] = {name: [] for name in SYSTEMS}
        for rep in range(args.reps):
            for name, template in SYSTEMS.items():
                out = workdir / "out"
                drop(out)
                warm(sorted(src.glob("*.safetensors")))
                cmd = [part.format(src=src, out=out) for part in template]
                log = workdir / f"log-{src.name}-{name.replace(' ', '_').replace('→', 'to')}-{rep}.txt"
                run = measure(cmd, log, env)
                if run.returncode != 0:
                    raise SystemExit(f"{name} on {src.name} failed (exit {run.returncode}); see {log}")
                run.out_bytes = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
                runs[name].append(run)
                print(f"{src.name} rep {rep + 1}/{args.reps} {name}: {run.wall_s:.1f} s, peak RSS "
                      f"{run.peak_rss / MB:.0f} MB (anonymous {run.peak_anon / MB:.0f} MB, ru_maxrss "
                      f"{run.ru_maxrss / MB:.0f} MB), output {run.out_bytes / GB:.2f} GB", flush=True)
                drop(out)
        base = statistics.median(r.wall_s for r in runs["cp -r"])
        results[src.name] = {"bytes": src_bytes, "systems": {
            name: {"wall_s": statistics.median(r.wall_s for r in rs), "x_cp": statistics.median(r.wall_s for r in rs) / base,
                   "peak_rss_mb": statistics.median(r.peak_rss for r in rs) / MB,
                   "peak_anon_mb": statistics.median(r.peak_anon for r in rs) / MB,
                   "ru_maxrss_mb": statistics.median(r.ru_maxrss for r in rs) / MB,
                   "out_gb": rs[0].out_bytes / GB} for name, rs in runs.items()}}
    small, large = (results[s.name] for s in sources)
    flat = {name: large["systems"][name]["peak_rss_mb"] - small["systems"][name]["peak_rss_mb"]
            for name in SYSTEMS if name.startswith("convert")}
    ok = all(extra * MB <= FLAT_EXTRA for extra in flat.values())
    print(f"\n{'source':32} {'system':24} {'wall s':>7} {'x cp -r':>8} {'peak RSS MB':>12} {'anon MB':>8} "
          f"{'out GB':>7}")
    for src in sources:
        r = results[src.name]
        label = f"{src.name} ({r['bytes'] / GB:.2f} GB)"
        for name, s in r["systems"].items():
            print(f"{label:32} {name:24} {s['wall_s']:7.1f} {s['x_cp']:8.2f} "
                  f"{s['peak_rss_mb']:12.0f} {s['peak_anon_mb']:8.0f} {s['out_gb']:7.2f}")
    print("peak RSS, larger minus smaller source: " + ", ".join(f"{n} {v:+.0f} MB" for n, v in flat.items())
          + f" (flat: <= +{FLAT_EXTRA / MB:.0f} MB) -> {'FLAT' if ok else 'NOT FLAT'}")
    commit = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], check=False,
                            capture_output=True, text=True).stdout.strip()
    (workdir / "bench_convert_fp8.json").write_text(json.dumps(
        {"commit": commit, "reps": args.reps, "experts": args.experts, "results": results,
         "rss_growth_mb": flat, "flat_extra_mb": FLAT_EXTRA / MB, "ok": ok}, indent=2) + "\n")
    if not args.keep:
        for src in sources:
            shutil.rmtree(src, ignore_errors=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
