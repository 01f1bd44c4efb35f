#!/usr/bin/env python
"""Benchmark `check_ops` on the configs of Llama-2-7B and Llama-3-70B, and the published DeepSeek-V3,
GLM-4.5 and DeepSeek-V2-Lite configs of examples/models: the model is built on the meta
device from config.json alone and exported twice (prefill, and one decode step against a KV cache),
every aten op classified against torch_npu 2.14.0, and the fusion report made.

    python benchmarks/bench_check_ops.py [--workdir DIR] [--reps N]

Each run is the real console script in a fresh child process (imports included, as a user pays
them); wall time from spawn to exit and the peak RSS of the process tree (polled every 20 ms, with
the kernel's ru_maxrss as a cross-check) come from `measure` in process_measure.py, as in
bench_convert. Targets (issue 3): 7B <= 10 s, 70B <= 60 s, peak RSS < 2 GB; (issue 20) the
MoE/MLA configs <= 15 s each. Medians of --reps runs
(default 3); a table on stdout and `<workdir>/bench_check_ops.json`.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
from pathlib import Path

from process_measure import (  # a sibling module: the script's folder is on sys.path
    GB,
    measure,
)

CONFIGS = {
    "Llama-2-7B": ({"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 4096,
                    "intermediate_size": 11008, "num_hidden_layers": 32, "num_attention_heads": 32,
                    "num_key_value_heads": 32, "vocab_size": 32000, "max_position_embeddings": 4096,
                    "rms_norm_eps": 1e-5, "rope_theta": 10000.0, "torch_dtype": "float16",
                    "bos_token_id": 1, "eos_token_id": 2, "hidden_act": "silu", "tie_word_embeddings": False},
                   10.0),
    "Llama-3-70B": ({"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 8192,
                     "intermediate_size": 28672, "num_hidden_layers": 80, "num_attention_heads": 64,
                     "num_key_value_heads": 8, "vocab_size": 128256, "max_position_embeddings": 8192,
                     "rms_norm_eps": 1e-5, "rope_theta": 500000.0, "torch_dtype": "bfloat16",
                     "bos_token_id": 128000, "eos_token_id": 128001, "hidden_act": "silu",
                     "tie_word_embeddings": False},
                    60.0),
}
# The published configs in examples/models (issue 20: config-only, "in seconds, under 2 GB"): 61 and 92
# layers of up to 256 experts, traced one decoder layer per kind.
EXAMPLES = Path(__file__).resolve().parents[1] / "examples" / "models"
for _name, _dir in (("DeepSeek-V3", "deepseek-v3"), ("GLM-4.5", "glm-4.5"), ("DeepSeek-V2-Lite", "deepseek-v2-lite")):
    CONFIGS[_name] = (json.loads((EXAMPLES / _dir / "config.json").read_text()), 15.0)
RSS_TARGET = 2 * GB


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", type=Path, default=Path("bench-out"))
    parser.add_argument("--reps", type=int, default=3)
    opts = parser.parse_args()
    exe = shutil.which("check_ops")
    if exe is None:
        sys.exit("check_ops is not installed: pip install -e .")
    opts.workdir.mkdir(parents=True, exist_ok=True)
    results = {}
    for name, (config, time_target) in CONFIGS.items():
        model = opts.workdir / name
        model.mkdir(exist_ok=True)
        (model / "config.json").write_text(json.dumps(config, indent=2))
        report = opts.workdir / f"{name}.check_ops.json"
        cmd = [exe, "--model", str(model), "--format", "json", "--output", str(report)]
        runs = [measure(cmd, opts.workdir / f"{name}.log", dict(os.environ)) for _ in range(opts.reps)]
        if any(r.returncode not in (0, 1) for r in runs):
            sys.exit(f"{name}: check_ops failed, see {opts.workdir / (name + '.log')}")
        data = json.loads(report.read_text())
        wall = statistics.median(r.wall_s for r in runs)
        rss = max(max(r.peak_rss, r.ru_maxrss) for r in runs)
        results[name] = {"wall_s": round(wall, 2), "wall_s_runs": [round(r.wall_s, 2) for r in runs],
                         "peak_rss_bytes": rss, "ops": data["ops"], "findings": len(data["findings"]),
                         "fusions": {f["pattern"]: f["count"] for f in data["fusions"]},
                         "time_target_s": time_target, "pass": wall <= time_target and rss < RSS_TARGET}
    print(f"{'config':<16} {'wall s':>7} {'target':>7} {'peak RSS':>9} {'ops':>5} {'calls':>6} {'findings':>8}  verdict")
    for name, r in results.items():
        print(f"{name:<16} {r['wall_s']:>7.2f} {r['time_target_s']:>7.0f} {r['peak_rss_bytes'] / GB:>7.2f}GB "
              f"{r['ops']['distinct']:>5} {r['ops']['calls']:>6} {r['findings']:>8}  {'PASS' if r['pass'] else 'MISS'}")
    (opts.workdir / "bench_check_ops.json").write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
