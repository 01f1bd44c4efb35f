#!/usr/bin/env python
"""`ascendkit preflight` on a synthetic ~2,000-tensor, 100-shard Qwen3-MoE checkpoint, against
`safetensors.safe_open` reading the same headers.

    python benchmarks/bench_preflight.py [--workdir DIR] [--reps 5] [--cli-reps 2]

Two checkpoints are generated once into --workdir (default `bench-out/preflight` of this checkout,
git-ignored; a `.complete` marker makes later runs reuse them):

  * `qwen3moe-float`: bf16, 8 layers x 80 experts x gate/up/down (1,995 tensors);
  * `qwen3moe-w8a8-dynamic`: msModelSlim's W8A8_DYNAMIC (int8 weight, float32 weight_scale and
    weight_offset [out, 1]) for every attention and expert linear, with quant_model_description.json
    listing every tensor, 8 layers x 26 experts (2,011 tensors), so the quant rules run on each one.

Both have 100 shards, model.safetensors.index.json, config.json and the qwen3_moe fixture's
tokenizer (with its chat template). The tensors are real but tiny ([32, 32] and the like): preflight
reads headers only, so the bytes behind them do not matter, and the two directories stay ~6 MB.

Measured, in this process, after one warm-up of each: `run_preflight(DIR, soc="ascend910b")` and,
interleaved with it so machine noise hits both alike, `safe_open` over every shard taking `.keys()`
and `.metadata()` (the library's own header read; a lower bound, since preflight also needs every
dtype and shape) and, as a second baseline, `safe_open` taking each tensor's dtype and shape too.
Medians of --reps. Both clean checkpoints must give no error finding (asserted). Then the CLI,
`ascendkit preflight DIR --format json`, as a child process --cli-reps times: wall time from spawn
to exit, Python start-up and imports included, reported separately.

Results: a table on stdout and `<workdir>/bench_preflight.json`.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # this checkout first: its packages, fixtures/

SHARDS = 100
HIDDEN, HEADS, KV_HEADS, HEAD_DIM, MOE_INTERMEDIATE, VOCAB = 32, 2, 2, 16, 32, 320
#: (directory name, layers, experts, quantized)
VARIANTS = (("qwen3moe-float", 8, 80, False), ("qwen3moe-w8a8-dynamic", 8, 26, True))
DESC = "quant_model_description.json"
MARKER = ".complete"
ATTENTION = {"q_proj": (HEADS * HEAD_DIM, HIDDEN), "k_proj": (KV_HEADS * HEAD_DIM, HIDDEN),
             "v_proj": (KV_HEADS * HEAD_DIM, HIDDEN), "o_proj": (HIDDEN, HEADS * HEAD_DIM)}
EXPERT = {"gate_proj": (MOE_INTERMEDIATE, HIDDEN), "up_proj": (MOE_INTERMEDIATE, HIDDEN),
          "down_proj": (HIDDEN, MOE_INTERMEDIATE)}


# ----------------------------------------------------------------------------- generation


def config(layers: int, experts: int) -> dict:
    """A Qwen3-MoE config.json with the tiny dimensions the tensors have (the model rules read it)."""
    return {"architectures": ["Qwen3MoeForCausalLM"], "model_type": "qwen3_moe", "hidden_size": HIDDEN,
            "num_hidden_layers": layers, "num_attention_heads": HEADS, "num_key_value_heads": KV_HEADS,
            "head_dim": HEAD_DIM, "intermediate_size": 4 * HIDDEN, "moe_intermediate_size": MOE_INTERMEDIATE,
            "num_experts": experts, "num_experts_per_tok": 2, "decoder_sparse_step": 1, "mlp_only_layers": [],
            "norm_topk_prob": True, "vocab_size": VOCAB, "rms_norm_eps": 1e-6, "max_position_embeddings": 512,
            "rope_theta": 10000.0, "tie_word_embeddings": False, "torch_dtype": "bfloat16"}


def tensors(layers: int, experts: int, quantized: bool) -> tuple[dict, dict[str, str]]:
    """(tensors in checkpoint order, each one's quant type): embedding, per layer the attention,
    its norms, the router and the experts; final norm and lm_head. Linears are W8A8_DYNAMIC when
    `quantized`; everything else stays FLOAT, as msModelSlim leaves it."""
    import torch

    out: dict = {}
    types: dict[str, str] = {}

    def plain(name: str, *shape: int) -> None:
        out[name] = torch.full(shape, 0.01, dtype=torch.bfloat16)
        types[name] = "FLOAT"

    def linear(stem: str, rows: int, cols: int) -> None:
        if not quantized:
            plain(f"{stem}.weight", rows, cols)
            return
        parts = {f"{stem}.weight": torch.ones(rows, cols, dtype=torch.int8),
                 f"{stem}.weight_scale": torch.full((rows, 1), 0.01, dtype=torch.float32),
                 f"{stem}.weight_offset": torch.zeros(rows, 1, dtype=torch.float32)}
        out.update(parts)
        types.update(dict.fromkeys(parts, "W8A8_DYNAMIC"))

    plain("model.embed_tokens.weight", VOCAB, HIDDEN)
    for layer in range(layers):
        prefix = f"model.layers.{layer}"
        plain(f"{prefix}.input_layernorm.weight", HIDDEN)
        for proj, (rows, cols) in ATTENTION.items():
            linear(f"{prefix}.self_attn.{proj}", rows, cols)
        plain(f"{prefix}.self_attn.q_norm.weight", HEAD_DIM)
        plain(f"{prefix}.self_attn.k_norm.weight", HEAD_DIM)
        plain(f"{prefix}.post_attention_layernorm.weight", HIDDEN)
        plain(f"{prefix}.mlp.gate.weight", experts, HIDDEN)
        for e in range(experts):
            for proj, (rows, cols) in EXPERT.items():
                linear(f"{prefix}.mlp.experts.{e}.{proj}", rows, cols)
    plain("model.norm.weight", HIDDEN)
    plain("lm_head.weight", VOCAB, HIDDEN)
    return out, types


def write_checkpoint(target: Path, layers: int, experts: int, quantized: bool, tokenizer_from: Path) -> None:
    """The directory as HF's sharded save_pretrained lays it out: consecutive tensors per shard,
    the index, config.json, the tokenizer; msModelSlim's description when quantized."""
    from safetensors.torch import save_file

    if target.exists():
        shutil.rmtree(target)  # an interrupted earlier generation
    target.mkdir(parents=True)
    named, types = tensors(layers, experts, quantized)
    names = list(named)
    weight_map: dict[str, str] = {}
    for i in range(SHARDS):
        shard = f"model-{i + 1:05d}-of-{SHARDS:05d}.safetensors"
        part = names[i * len(names) // SHARDS:(i + 1) * len(names) // SHARDS]
        save_file({n: named[n].contiguous() for n in part}, str(target / shard), metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(part, shard))
    total = sum(t.numel() * t.element_size() for t in named.values())
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (target / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")
    (target / "config.json").write_text(json.dumps(config(layers, experts), indent=2) + "\n")
    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
        if (tokenizer_from / name).is_file():
            shutil.copyfile(tokenizer_from / name, target / name)
    if quantized:
        desc = {"model_quant_type": "W8A8_DYNAMIC", "version": "1.0.0", **types}
        (target / DESC).write_text(json.dumps(desc, indent=2) + "\n")
    (target / MARKER).write_text("")


def generate(workdir: Path) -> dict[str, Path]:
    """Every variant's directory, generated once (reused while its `.complete` marker is there)."""
    dirs = {name: workdir / name for name, *_ in VARIANTS}
    missing = [v for v in VARIANTS if not (dirs[v[0]] / MARKER).is_file()]
    if missing:
        from fixtures.checkpoints import build

        tokenizer_from = build("qwen3_moe", workdir / "fixture")
        for name, layers, experts, quantized in missing:
            print(f"generating {dirs[name]} ...", flush=True)
            write_checkpoint(dirs[name], layers, experts, quantized, tokenizer_from)
    return dirs


# ----------------------------------------------------------------------------- measured work


def preflight(model: Path) -> dict:
    """What the CLI's default run does in-process; the counts the report needs."""
    from ascend_convert.preflight.run import run_preflight

    result = run_preflight(model, soc="ascend910b")
    return {"tensors": result.tensors, "files": result.files, "findings": len(result.findings),
            "errors": len(result.errors), "lines": [f.line for f in result.findings]}


def shards(model: Path) -> list[Path]:
    return sorted(model.glob("*.safetensors"))


def safe_open_keys(model: Path) -> dict:
    """The safetensors library's own header read: every shard opened, its names and metadata taken."""
    from safetensors import safe_open

    count = 0
    for path in shards(model):
        with safe_open(str(path), framework="pt") as f:
            count += len(f.keys())
            f.metadata()
    return {"tensors": count}


def safe_open_shapes(model: Path) -> dict:
    """As `safe_open_keys`, plus each tensor's dtype and shape (what preflight's rules look at)."""
    from safetensors import safe_open

    count = 0
    for path in shards(model):
        with safe_open(str(path), framework="pt") as f:
            f.metadata()
            names = f.keys()  # a list: safe_open's handle is not iterable
            for name in names:
                piece = f.get_slice(name)
                piece.get_dtype()
                piece.get_shape()
                count += 1
    return {"tensors": count}


def cli(model: Path) -> dict:
    """`ascendkit preflight DIR --format json` as a fresh child process of this checkout."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    command = [sys.executable, "-m", "ascendkit", "preflight", str(model), "--format", "json"]
    proc = subprocess.run(command, check=False, capture_output=True, text=True, env=env, cwd=ROOT)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(command)}: exit {proc.returncode}\n{proc.stdout[-2000:]}{proc.stderr[-2000:]}")
    report = json.loads(proc.stdout)
    return {"findings": len(report["findings"])}


def timed(fn: Callable[[Path], dict], model: Path) -> tuple[float, dict]:
    t0 = time.perf_counter()
    result = fn(model)
    return time.perf_counter() - t0, result


# ----------------------------------------------------------------------------- the run


IN_PROCESS: dict[str, Callable[[Path], dict]] = {
    "preflight": preflight, "safe_open keys": safe_open_keys, "safe_open dtype+shape": safe_open_shapes}


def measure(dirs: dict[str, Path], reps: int, cli_reps: int) -> dict:
    """Warm-up once, then `reps` interleaved rounds (every system on every variant per round); then
    the CLI children."""
    results: dict = {name: {"dir": str(path), "times": {k: [] for k in IN_PROCESS}, "cli_s": []}
                     for name, path in dirs.items()}
    for name, path in dirs.items():
        first = preflight(path)
        assert first["errors"] == 0, f"{name}: the clean checkpoint has error findings:\n" + "\n".join(first["lines"])
        results[name].update(first, size_mb=sum(p.stat().st_size for p in path.iterdir()) / 1e6)
        for key, fn in IN_PROCESS.items():
            fn(path)  # warm-up: imports, rule file, page cache
    for _ in range(reps):
        for name, path in dirs.items():
            for key, fn in IN_PROCESS.items():
                seconds, out = timed(fn, path)
                assert out["tensors"] == results[name]["tensors"], (name, key, out)
                results[name]["times"][key].append(seconds)
    for _ in range(cli_reps):
        for name, path in dirs.items():
            seconds, out = timed(cli, path)
            assert out["findings"] == results[name]["findings"], (name, out)
            results[name]["cli_s"].append(seconds)
    for entry in results.values():
        entry["median_s"] = {k: statistics.median(v) for k, v in entry["times"].items()}
        entry["preflight_s_per_1000_tensors"] = entry["median_s"]["preflight"] / entry["tensors"] * 1000
        entry["ratio_preflight_over_safe_open_keys"] = entry["median_s"]["preflight"] / entry["median_s"]["safe_open keys"]
        entry["ratio_preflight_over_safe_open_shapes"] = (entry["median_s"]["preflight"]
                                                          / entry["median_s"]["safe_open dtype+shape"])
        entry["cli_median_s"] = statistics.median(entry["cli_s"]) if entry["cli_s"] else None
    return results


def print_table(results: dict, reps: int, cli_reps: int) -> None:
    print(f"\nmedians of {reps} interleaved in-process runs; CLI: median of {cli_reps} child processes")
    print(f"{'checkpoint':<24}{'tensors':>8}{'files':>6}{'errors':>7}{'preflight':>11}{'/1k tensors':>12}"
          f"{'safe_open':>11}{'ratio':>7}{'+shapes':>9}{'ratio':>7}{'CLI wall':>10}")
    for name, r in results.items():
        m = r["median_s"]
        cli_s = f"{r['cli_median_s']:9.2f}s" if r["cli_median_s"] is not None else f"{'-':>10}"
        print(f"{name:<24}{r['tensors']:>8}{r['files']:>6}{r['errors']:>7}{m['preflight'] * 1e3:>9.1f}ms"
              f"{r['preflight_s_per_1000_tensors'] * 1e3:>10.1f}ms{m['safe_open keys'] * 1e3:>9.1f}ms"
              f"{r['ratio_preflight_over_safe_open_keys']:>6.1f}x{m['safe_open dtype+shape'] * 1e3:>7.1f}ms"
              f"{r['ratio_preflight_over_safe_open_shapes']:>6.1f}x{cli_s}")


def machine() -> dict:
    import safetensors

    return {"nproc": os.cpu_count(), "sched_affinity": len(os.sched_getaffinity(0)), "platform": platform.platform(),
            "processor": platform.processor(), "python": platform.python_version(),
            "safetensors": safetensors.__version__, "loadavg": os.getloadavg()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, default=ROOT / "bench-out" / "preflight")
    parser.add_argument("--reps", type=int, default=5, help="in-process repetitions after the warm-up")
    parser.add_argument("--cli-reps", type=int, default=2, help="CLI child processes per checkpoint (0: none)")
    args = parser.parse_args()
    dirs = generate(args.workdir)
    before = machine()
    results = measure(dirs, args.reps, args.cli_reps)
    print_table(results, args.reps, args.cli_reps)
    for r in results.values():
        r.pop("lines")
    report = {"machine": before, "loadavg_after": os.getloadavg(), "reps": args.reps, "cli_reps": args.cli_reps,
              "shards": SHARDS, "checkpoints": results}
    out = args.workdir / "bench_preflight.json"
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"\nnproc {before['nproc']}, load average {before['loadavg'][0]:.2f} before; report: {out}")


if __name__ == "__main__":
    main()
