"""W8A8 calibration: the range of every quantized linear layer's input over a few prompts.

W8A8 quantizes activations with one static scale and offset per layer (msModelSlim's static
per-tensor scheme), so the converter must know what each linear layer sees. The source model runs
once, in transformers, over the calibration texts (built-in, or `--calib FILE`: one text per line),
with a forward pre-hook on each linear that records the min and max of each channel of its input
(per channel, so that SmoothQuant's smoothing, decided afterwards, can tell the range of the
smoothed input without a second pass). The model is
held once, in the source's precision (bf16 for a half-precision source), not beside a second copy;
the conversion that follows streams as usual. A remote-code architecture runs only with
`--trust-remote-code`.
"""

from __future__ import annotations

from pathlib import Path

import torch

from ascend_common.errors import UserError
from ascend_common.model_paths import pretrained_args

#: Varied on purpose: prose, a dialogue, code, numbers, a list, non-English text — the layers'
#: input ranges depend on what the model reads.
BUILTIN_TEXTS = (
    "The capital of France is Paris, a city on the Seine known for its museums and cafes.",
    "User: How do I reverse a list in Python?\nAssistant: Use reversed(items) or items[::-1].",
    "def fibonacci(n):\n    if n < 2:\n        return n\n    return fibonacci(n - 1) + fibonacci(n - 2)\n",
    "In 1969, Apollo 11 landed on the Moon; the mission lasted 8 days, 3 hours and 18 minutes.",
    "Ingredients: 2 cups of flour, 1 teaspoon of salt, 3 eggs, 250 ml of milk and a pinch of sugar.",
    "Large language models are served on accelerators such as Ascend NPUs with paged attention.",
    "SELECT name, COUNT(*) FROM orders WHERE total > 100 GROUP BY name ORDER BY 2 DESC;",
    "机器学习是人工智能的一个分支，它使计算机能够从数据中学习。",
    "The quick brown fox jumps over the lazy dog. 0123456789 !@#$%^&*()",
    "Dear team, the quarterly report is attached; please send your comments by Friday.",
)
MAX_TOKENS = 512


def calibration_texts(calib: Path | None) -> list[str]:
    if calib is None:
        return list(BUILTIN_TEXTS)
    try:
        lines = [line.strip() for line in Path(calib).read_text(encoding="utf-8").splitlines()]
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"--calib {calib}: cannot read it ({exc})") from None
    texts = [line for line in lines if line]
    if not texts:
        raise UserError(f"--calib {calib}: no text in it (one calibration text per line)")
    return texts


def calibrate(src: Path, weight_names: set[str], texts: list[str], source_dtype: str,
              trust_remote_code: bool = False) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """`{weight name: (per-channel min, per-channel max) of that linear layer's input}` (fp32
    vectors) for every name in `weight_names`."""
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # its bar and warnings would interleave with the converter's output
    hf_logging.set_verbosity_error()
    where = pretrained_args(src)
    dtype = torch.float32 if source_dtype == "float32" else torch.bfloat16
    try:
        tokenizer = AutoTokenizer.from_pretrained(**where, trust_remote_code=trust_remote_code)
        model = AutoModelForCausalLM.from_pretrained(**where, dtype=dtype, trust_remote_code=trust_remote_code)
    except ValueError as exc:
        if "trust_remote_code" in str(exc):
            raise UserError(f"{src}: W8A8 calibration runs the model, and its code is remote code: pass "
                            f"--trust-remote-code to allow it") from None
        raise UserError(f"{src}: cannot load the model for W8A8 calibration ({exc})") from None
    except OSError as exc:
        raise UserError(f"{src}: W8A8 calibration needs the model's tokenizer ({exc})") from None
    model.eval()
    ranges: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    hooks = []
    for module_name, module in model.named_modules():
        name = f"{module_name}.weight"
        if name in weight_names and isinstance(module, torch.nn.Linear):
            def record(_module, args, name=name):
                x = args[0].detach().float().reshape(-1, args[0].shape[-1])
                lo, hi = x.amin(0), x.amax(0)
                if name in ranges:
                    lo, hi = torch.minimum(ranges[name][0], lo), torch.maximum(ranges[name][1], hi)
                ranges[name] = (lo, hi)
            hooks.append(module.register_forward_pre_hook(record))
    try:
        with torch.no_grad():
            for text in texts:
                ids = tokenizer(text, return_tensors="pt", truncation=True, max_length=MAX_TOKENS)["input_ids"]
                if ids.numel():
                    model(input_ids=ids)
    finally:
        for hook in hooks:
            hook.remove()
    missing = sorted(weight_names - set(ranges))
    if missing:
        raise UserError(f"{src}: calibration saw no input for {len(missing)} linear layer(s), e.g. {missing[0]} "
                        f"(the model does not name it as the checkpoint does)")
    bad = [n for n, (lo, hi) in ranges.items() if not (torch.isfinite(lo).all() and torch.isfinite(hi).all())]
    if bad:
        raise UserError(f"{src}: calibration saw NaN or Inf at the input of {bad[0]}")
    return ranges
