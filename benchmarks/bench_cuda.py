#!/usr/bin/env python
"""`ascendkit bench` on a CUDA GPU against transformers there, with greedy agreement, on SmolLM2 shapes.

    python benchmarks/bench_cuda.py --source DIR [--workdir DIR] [--shapes 135m,1.7b] [--device cuda]
                                    [--repeat 2] [--new-tokens 64] [--baselines hf,hf-batch]

A GPU machine of this workplace reaches nothing outside it and takes at most 64 MiB of files, so the
real SmolLM2 weights (a 98 MB GGUF, 270 MB in bf16) cannot travel there. What travels is SmolLM2's
config and tokenizer (`--source`: a converted SmolLM2 directory, or any Llama-family one); each shape
is that config with SmolLM2's own published sizes (135M as is, 1.7B: hidden 2048, 24 layers, 32 heads,
MLP 8192), its weights drawn by transformers' own initializer on the device, seeded, in bf16. Random
weights leave the timings as they are (every system generates exactly the same number of tokens);
greedy agreement is still checked token for token, against transformers on the same device, by the
same rule as `smoke` (a divergence counts as a tie only where transformers' top two logits are within
two bf16 ulps).

Per shape: the checkpoint (not measured), 8 prompts x 32 greedy tokens runtime vs transformers, then
`ascendkit bench --workloads single,batch64` against the baselines in one process, its JSON report at
`<workdir>/<shape>/bench.json`. Everything ends in `<workdir>/bench_cuda.json`.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout first

#: SmolLM2's published sizes (HuggingFaceTB/SmolLM2-135M and -1.7B config.json), over the source config.
SHAPES: dict[str, dict[str, int]] = {
    "135m": {},
    "1.7b": {"hidden_size": 2048, "intermediate_size": 8192, "num_hidden_layers": 24,
             "num_attention_heads": 32, "num_key_value_heads": 32, "head_dim": 64},
}
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja",
                   "generation_config.json")
PROMPTS = ("The capital of France is", "def fibonacci(n):", "Once upon a time, in a small village,",
           "The three laws of thermodynamics are", "Translate to German: good morning",
           "1, 1, 2, 3, 5, 8,", "A haiku about the sea:", "The quick brown fox")
GREEDY_TOKENS = 32


def make_checkpoint(source: Path, shape: str, out: Path, device: str) -> Path:
    """`source`'s config with the shape's sizes, weights from transformers' initializer (seed 0) in
    bf16 on `device`, saved by `save_pretrained` with the source's tokenizer files beside them."""
    if (out / "config.json").is_file():
        return out
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(source)
    for key, value in SHAPES[shape].items():
        setattr(config, key, value)
    torch.manual_seed(0)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    tmp = out.with_name(out.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    for name in TOKENIZER_FILES:
        if (source / name).is_file():
            shutil.copy2(source / name, tmp / name)
    tmp.rename(out)
    return out


def greedy_agreement(model: Path, device: str) -> dict[str, Any]:
    """The runtime's greedy tokens on PROMPTS (one batch) against transformers `generate` on the same
    device and weights: how many prompts match, tie, mismatch."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from runtime import LLM, SamplingParams
    from runtime.evaluation.greedy_check import compare_greedy, hf_greedy

    tokenizer = AutoTokenizer.from_pretrained(model)
    prompts = [tokenizer.encode(p) for p in PROMPTS]
    llm = LLM(model, device=device, kv_cache_memory="1GiB")
    ours = llm.generate(prompts, SamplingParams(temperature=0, max_tokens=GREEDY_TOKENS),
                        progress=False)
    del llm
    hf = AutoModelForCausalLM.from_pretrained(model, dtype=torch.bfloat16).to(device).eval()
    verdicts = []
    for prompt, out in zip(prompts, ours):
        ref_tokens, ref_logits = hf_greedy(hf, prompt, GREEDY_TOKENS)
        verdicts.append(compare_greedy(out.token_ids, ref_tokens, ref_logits, torch.bfloat16))
    del hf
    counts = {s: sum(v.status == s for v in verdicts) for s in ("match", "tie", "mismatch")}
    return {**counts, "prompts": len(prompts), "tokens": GREEDY_TOKENS,
            "divergences": [v.index for v in verdicts if v.status != "match"]}


def bench(model: Path, args: argparse.Namespace) -> dict[str, Any]:
    from runtime.evaluation.bench.report import print_report
    from runtime.evaluation.bench.runner import run_bench

    report = run_bench(model, device=args.device, workloads=["single", "batch64"],
                       baselines=args.baselines.split(","), new_tokens=args.new_tokens, repeat=args.repeat)
    (model.parent / "bench.json").write_text(json.dumps(report, indent=1, default=str))
    print_report(report)
    return report


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--source", type=Path, required=True, help="a SmolLM2 (Llama) directory: config, tokenizer")
    ap.add_argument("--workdir", type=Path, default=Path("bench-out/cuda"))
    ap.add_argument("--shapes", default=",".join(SHAPES))
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--baselines", default="hf,hf-batch")
    args = ap.parse_args()
    import torch

    import transformers

    results: dict[str, Any] = {"torch": torch.__version__, "transformers": transformers.__version__,
                               "gpu": torch.cuda.get_device_name(0) if args.device == "cuda" else args.device}
    for shape in args.shapes.split(","):
        if shape not in SHAPES:
            raise SystemExit(f"--shapes: {shape!r} is not one of {', '.join(SHAPES)}")
        print(f"== {shape}: checkpoint", flush=True)
        model = make_checkpoint(args.source, shape, args.workdir / shape / "model", args.device)
        greedy = greedy_agreement(model, args.device)
        print(f"== {shape}: greedy {greedy}", flush=True)
        results[shape] = {"greedy": greedy, "bench": bench(model, args)}
    (args.workdir / "bench_cuda.json").write_text(json.dumps(results, indent=1, default=str))


if __name__ == "__main__":
    main()
