"""Click commands: `convert`, `verify`, and the `convert_checkpoint` alias of the seed article.

Heavy modules (torch, transformers) are imported inside the commands so `--help` stays fast.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from ascend_common.cli_support import debug_option, run_main
from ascend_common.soc import DTYPE_CHOICES, SOC_CHOICES

from .convert_options import (
    DEFAULT_MAX_SHARD_SIZE,
    LAYOUTS,
    MTP_CHOICES,
    OVERFLOW_POLICIES,
)
from .quant_layout import QUANT_TYPES


def convert_options(func):
    """Options shared by `ascendkit convert` and `convert_checkpoint`."""
    for option in reversed([
        click.option("--soc", type=click.Choice(SOC_CHOICES), default="ascend910b", show_default=True,
                     help="Target chip: decides which dtypes are allowed."),
        click.option("--dtype", type=click.Choice(DTYPE_CHOICES), default="auto", show_default=True,
                     help="auto: bf16 where the chip has it and the source is bf16, else fp16."),
        click.option("--max-shard-size", default=DEFAULT_MAX_SHARD_SIZE, show_default=True,
                     help="Largest output file (5GB, 500MB...)."),
        click.option("--on-overflow", type=click.Choice(OVERFLOW_POLICIES), default=OVERFLOW_POLICIES[0],
                     show_default=True, help="What to do with values beyond ±65504 when casting to fp16."),
        click.option("--arch-spec", "arch_specs", multiple=True, type=click.Path(path_type=Path),
                     help="Extra architecture spec (JSON), see ascend_convert/specs/."),
        click.option("--quantize", type=click.Choice(tuple(QUANT_TYPES)), default=None,
                     help="Write int8 linear weights in msModelSlim's layout (vllm-ascend --quantization ascend): "
                          "w8a16, w8a8 (static activation scales; an MoE model's experts W8A8_DYNAMIC) or "
                          "w8a8-dynamic (per-token activation scales at run time, no calibration)."),
        click.option("--group-size", type=click.IntRange(min=0), default=0, show_default=True,
                     help="--quantize: a scale per this many input columns (0: one per output channel)."),
        click.option("--asymmetric", is_flag=True, help="--quantize w8a16: a zero point per channel or group."),
        click.option("--calib", type=click.Path(path_type=Path), default=None,
                     help="--quantize w8a8: calibration texts, one per line [default: built-in prompts]."),
        click.option("--trust-remote-code", is_flag=True,
                     help="--quantize w8a8: allow calibration to run a model whose code is remote code."),
        click.option("--keep-float", default=None, metavar="ROLES",
                     help="--quantize: linear roles left in float, comma-separated (q,k,v,o,gate,up,down, "
                          "expert_gate,expert_up,expert_down, shared_gate,shared_up,shared_down; 'none' for none; "
                          "parts vllm-ascend fuses go together) [default: down for w8a8, none otherwise]."),
        click.option("--quantize-lm-head", is_flag=True,
                     help="--quantize w8a16 or w8a8-dynamic: quantize the LM head too (msModelSlim's "
                          "disable_last_linear=False); a tied head is written as its own int8 lm_head, untied from "
                          "the float embedding, since vllm-ascend quantizes no embedding lookup."),
        click.option("--smooth-alpha", type=float, default=None,
                     help="--quantize w8a8: SmoothQuant migration strength, 0 to turn it off [default: 0.5]."),
        click.option("--layout", type=click.Choice(LAYOUTS), default=LAYOUTS[0], show_default=True,
                     help="packed: tp{N}/rank{r}.safetensors pre-split for --tp N ranks (the runtime's layout)."),
        click.option("--tp", type=click.IntRange(min=1), default=1, show_default=True,
                     help="--layout packed: the tensor-parallel size."),
        click.option("--nz", is_flag=True, help="--layout packed: tile matmul weights to FRACTAL_NZ (ACL format 29). "
                                                "Read by ascendkit serve only, which untiles them; vllm-ascend reads "
                                                "no NZ from disk (it casts to NZ on the device at load)."),
        click.option("--mtp", type=click.Choice(MTP_CHOICES), default=MTP_CHOICES[0], show_default=True,
                     help="The checkpoint's multi-token-prediction layers (num_nextn_predict_layers: DeepSeek-V3, "
                          "GLM-4.5), for vllm-ascend's MTP speculative decoding: keep them (float when quantizing, "
                          "as vllm-ascend expects), quantize them like the decoder's layers (msModelSlim's DeepSeek "
                          "recipes), or drop them."),
        click.option("--engine", default="vllm-ascend", show_default=True, metavar="NAME[@RELEASE]|none",
                     help="Publish only what this engine's loader takes (preflight's rules; `ascendkit preflight`); "
                          "none: skip the check (an output for ascendkit serve or another loader)."),
        click.option("--force", is_flag=True, help="Overwrite an existing output directory."),
        click.option("--resume", is_flag=True, help="Finish an interrupted conversion."),
        click.option("--dry-run", is_flag=True, help="Print the plan; write nothing."),
        click.option("--progress/--no-progress", default=True, help="Show a progress bar (on a terminal)."),
        click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON."),
        debug_option,
    ]):
        func = option(func)
    return func


def run_convert(src: Path, out: Path, soc: str, dtype: str, max_shard_size: str, on_overflow: str,
                arch_specs: tuple[Path, ...], force: bool, resume: bool, dry_run: bool, progress: bool,
                as_json: bool, quantize: str | None = None, group_size: int = 0, asymmetric: bool = False,
                calib: Path | None = None, trust_remote_code: bool = False, keep_float: str | None = None,
                smooth_alpha: float | None = None, layout: str = "default", tp: int = 1, nz: bool = False,
                engine: str = "vllm-ascend", mtp: str = "keep", quantize_lm_head: bool = False) -> int:
    from .convert_options import ConvertOptions

    options = ConvertOptions(soc=soc, dtype=dtype, max_shard_size=max_shard_size, on_overflow=on_overflow,
                             arch_specs=list(arch_specs), force=force, resume=resume, dry_run=dry_run,
                             quantize=quantize, group_size=group_size, symmetric=not asymmetric, calib=calib,
                             trust_remote_code=trust_remote_code, smooth_alpha=smooth_alpha, layout=layout, tp=tp, nz=nz,
                             engine=engine, mtp=mtp, quantize_lm_head=quantize_lm_head,
                             keep_float=None if keep_float is None else tuple(
                                 r.strip() for r in keep_float.split(",") if r.strip() and r.strip() != "none"))
    options.validate()  # before torch is imported: a wrong option costs a fraction of a second

    from .converter import convert
    from .plan import make_plan
    from .progress import RichReporter
    from .report import print_convert_summary, print_plan
    from .workdir import refuse_existing

    if not dry_run:
        refuse_existing(out, force)  # before the source is parsed (seconds for a large GGUF)
    plan = make_plan(src, out, options)
    if dry_run:
        print_plan(plan, as_json=as_json)
        plan.reader.close()
        return 0
    reporter = RichReporter(f"convert → {plan.dtype}", enabled=progress and sys.stderr.isatty())
    result = convert(src, out, options, reporter, plan=plan)
    print_convert_summary(result, as_json=as_json)
    return 0


@click.command("convert")
@click.argument("src", type=click.Path(path_type=Path))
@click.argument("out", type=click.Path(path_type=Path))
@convert_options
def convert_command(src: Path, out: Path, **kwargs) -> int:
    """Convert an HF checkpoint directory or a .gguf file SRC into the Ascend layout at OUT."""
    return run_convert(src, out, **kwargs)


@click.command("convert_checkpoint")
@click.option("--input_dir", "--input-dir", "src", required=True, type=click.Path(path_type=Path),
              help="HF checkpoint directory (or .gguf file).")
@click.option("--output_dir", "--output-dir", "out", required=True, type=click.Path(path_type=Path),
              help="Where to write the Ascend layout.")
@click.option("--backend", type=click.Choice(("ascend",)), default="ascend", show_default=True,
              help="Target backend (Ascend NPUs).")
@convert_options
def convert_checkpoint_command(src: Path, out: Path, backend: str, **kwargs) -> int:
    """Convert a checkpoint for Ascend NPUs (the same as `ascendkit convert`)."""
    return run_convert(src, out, **kwargs)


@click.command("verify")
@click.argument("out", type=click.Path(path_type=Path))
@click.option("--source", type=click.Path(path_type=Path), help="Compare every tensor with this source checkpoint.")
@click.option("--logits", is_flag=True, help="Also compare logits of a forward pass (needs --source).")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@debug_option
def verify_command(out: Path, source: Path | None, logits: bool, as_json: bool) -> int:
    """Re-hash a converted directory against its manifest (and its source); exit 1 on the first mismatch."""
    from .verify import verify

    report = verify(out, source=source, logits=logits)
    summary = {"ok": report.ok, "files": report.files_checked, "tensors": report.tensors_checked,
               "source_tensors": report.source_checked, "max_abs_error": report.max_abs_error,
               "logits": report.logits}
    if as_json:
        click.echo(json.dumps(summary, indent=2))
    else:
        line = f"verified {out}: {report.files_checked} files and {report.tensors_checked} tensors match the manifest"
        if source is not None:
            line += f"; {report.source_checked} tensors equal the checked cast (or quantization) of the source " \
                    f"(max abs error {report.max_abs_error:.3g})"
        click.echo(line)
        if report.logits:
            lg = report.logits
            click.echo(f"logits: max abs diff {lg['max_abs_diff']:.3g} (tolerance {lg['tolerance']:.3g}), "
                       f"top-1 agreement {lg['top1_agreement']:.1%} over {lg['positions']} positions")
    return 0


def convert_main() -> None:
    run_main(convert_command, prog_name="python -m ascend_convert")


def convert_checkpoint_main() -> None:
    run_main(convert_checkpoint_command, prog_name="convert_checkpoint")
