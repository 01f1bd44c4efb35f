"""What `convert` is asked to do, checked without torch: a wrong option or a wrong combination of
options is refused in a fraction of a second, before torch (2 s here) and the checkpoint are loaded.

`ConvertOptions` is also what the manifest records (`recorded()`) and what a resumed conversion's
journal is keyed by."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ascend_common.errors import UserError
from ascend_common.sizes import parse_size
from ascend_common.soc import SocProfile, get_soc

from .quant_layout import (
    DEFAULT_ALPHA,
    DEFAULT_KEEP_FLOAT,
    FUSED_GROUPS,
    QUANT_TYPES,
    QUANTIZABLE_ROLES,
    QuantOptions,
)

#: `--on-overflow`: a cast that overflows the target dtype fails the conversion, or is clamped (and counted).
OVERFLOW_POLICIES = ("fail", "clamp")
#: `--layout`: HF names in shards, or tp{N}/rank{r}.safetensors pre-split for N ranks.
LAYOUTS = ("default", "packed")
#: `--mtp`: a checkpoint's multi-token-prediction layers are converted and kept float when quantizing
#: (the default: vllm-ascend 182b75e's ModelSlim loader notes MTP is expected unquantized, only "W8A8 +
#: float MTP" serves DeepSeek-R1 there (vllm-ascend #2771), and msModelSlim's GLM-4.5 recipe leaves the
#: layer out), typed like the decoder's layers (`quantize`: msModelSlim 26.1.0's DeepSeek-V3 recipes),
#: or dropped. Kept either way, every tensor is in the description with its real type.
MTP_CHOICES = ("keep", "quantize", "drop")

DEFAULT_MAX_SHARD_SIZE = "5GB"
def _shard_size_error(text: str | int) -> str:
    return f"--max-shard-size {text}: not a size (e.g. 5GB, 500MB, 2GiB)"


@dataclass
class ConvertOptions:
    soc: str = "ascend910b"
    dtype: str = "auto"
    max_shard_size: str | int = DEFAULT_MAX_SHARD_SIZE
    on_overflow: str = "fail"
    arch_specs: list[Path] = field(default_factory=list)
    force: bool = False
    resume: bool = False
    dry_run: bool = False
    quantize: str | None = None  # "w8a16", "w8a8" or "w8a8-dynamic": msModelSlim's layout (quant_layout.py)
    group_size: int = 0
    symmetric: bool = True
    calib: Path | None = None  # w8a8: calibration texts, one per line (None: built-in)
    trust_remote_code: bool = False  # w8a8 calibration runs the model, remote code included only if allowed
    keep_float: tuple[str, ...] | None = None  # linear roles left float (None: DEFAULT_KEEP_FLOAT)
    quantize_lm_head: bool = False  # msModelSlim's disable_last_linear=False (quant_layout.py)
    smooth_alpha: float | None = None  # w8a8: SmoothQuant alpha (None: DEFAULT_ALPHA; 0: off)
    layout: str = "default"  # "default" (HF names, shards) or "packed" (tp{N}/rank{r}.safetensors)
    tp: int = 1  # packed: the tensor-parallel size
    nz: bool = False  # packed: matmul weights tiled to FRACTAL_NZ
    #: the engine whose loader rules the output must pass before it is published (preflight's
    #: `--engine`); "none": not checked (the packed layout is read by ascendkit's runtime only)
    engine: str = "vllm-ascend"
    mtp: str = "keep"  # MTP_CHOICES

    def quant(self) -> QuantOptions | None:
        if self.quantize is None:
            if self.calib is not None:
                raise UserError("--calib is for --quantize w8a8")
            if self.quantize_lm_head:
                raise UserError("--quantize-lm-head is for --quantize w8a16 or w8a8-dynamic")
            return None
        if self.quantize not in QUANT_TYPES:
            raise UserError(f"--quantize {self.quantize}: choose one of {', '.join(QUANT_TYPES)}")
        if self.group_size < 0:
            raise UserError(f"--group-size {self.group_size}: must be 0 (per channel) or a positive group size")
        if self.quantize != "w8a16" and (self.group_size or not self.symmetric):
            raise UserError(f"--quantize {self.quantize} quantizes weights symmetrically per channel: drop "
                            f"--group-size and --asymmetric (they are for w8a16)")
        if self.quantize == "w8a16" and self.calib is not None:
            raise UserError("--calib is for --quantize w8a8 (w8a16 needs no calibration)")
        if self.quantize == "w8a8-dynamic" and self.calib is not None:
            raise UserError("--calib is for --quantize w8a8 (w8a8-dynamic quantizes activations per token at run "
                            "time: no calibration)")
        if self.quantize == "w8a16" and self.smooth_alpha:
            raise UserError("--smooth-alpha is for --quantize w8a8 (w8a16 keeps activations in float)")
        if self.quantize == "w8a8-dynamic" and self.smooth_alpha:
            raise UserError("--smooth-alpha is for --quantize w8a8 (w8a8-dynamic's per-token scales need no smoothing)")
        if self.quantize == "w8a8" and self.quantize_lm_head:
            raise UserError("--quantize-lm-head with --quantize w8a8: a static W8A8 head needs a calibrated input "
                            "scale for the final norm's output, which this converter does not collect (use w8a16 "
                            "or w8a8-dynamic, or drop --quantize-lm-head)")
        alpha = DEFAULT_ALPHA if self.smooth_alpha is None else self.smooth_alpha
        if not 0 <= alpha < 1:
            raise UserError(f"--smooth-alpha {alpha}: must be in [0, 1) (0 turns smoothing off)")
        keep = DEFAULT_KEEP_FLOAT[self.quantize] if self.keep_float is None else tuple(self.keep_float)
        unknown = sorted(set(keep) - QUANTIZABLE_ROLES)
        if unknown:
            raise UserError(f"--keep-float {','.join(unknown)}: not a linear layer role (choose from "
                            f"{', '.join(sorted(QUANTIZABLE_ROLES))})")
        for group in FUSED_GROUPS:  # vllm-ascend loads each group as one module: one type for all of it
            if 0 < len(set(group) & set(keep)) < len(group):
                raise UserError(f"--keep-float {','.join(r for r in group if r in keep)}: vllm-ascend loads "
                                f"{'/'.join(group)} as one module, so they are kept float together or not at all "
                                f"(name all of {','.join(group)})")
        return QuantOptions(self.quantize, self.group_size, self.symmetric,
                            str(Path(self.calib).resolve()) if self.calib is not None else None,
                            tuple(sorted(set(keep))), alpha if self.quantize == "w8a8" else 0.0,
                            self.quantize_lm_head)

    def check_layout(self) -> None:
        if self.layout not in LAYOUTS:
            raise UserError(f"--layout {self.layout}: choose {' or '.join(LAYOUTS)}")
        if self.layout == "packed":
            if self.quantize is not None:
                raise UserError("--layout packed writes float weights; --quantize writes msModelSlim's layout, "
                                "which vllm-ascend splits itself: use one or the other")
            if not isinstance(self.tp, int) or self.tp < 1:
                raise UserError(f"--tp {self.tp}: must be an integer >= 1")
        elif self.tp != 1 or self.nz:
            raise UserError("--tp and --nz are for --layout packed")

    def validate(self) -> tuple[SocProfile, int, QuantOptions | None]:
        """Every option and combination checked, before anything is read: the SoC, the shard size in
        bytes and the quantization (None: float weights)."""
        if self.mtp not in MTP_CHOICES:
            raise UserError(f"--mtp {self.mtp}: choose {', '.join(MTP_CHOICES)}")
        if self.mtp == "quantize" and self.quantize == "w8a8":
            raise UserError("--quantize w8a8 --mtp quantize: W8A8's calibration runs transformers' model, which has no "
                            "MTP layer to calibrate (use --quantize w8a8-dynamic, or --mtp keep)")
        if self.on_overflow not in OVERFLOW_POLICIES:
            raise UserError(f"--on-overflow {self.on_overflow}: choose one of {', '.join(OVERFLOW_POLICIES)}")
        soc = get_soc(self.soc)
        max_shard = parse_size(self.max_shard_size, _shard_size_error(self.max_shard_size))
        self.check_layout()
        if self.engine != "none":
            from .preflight.ruleset import load_ruleset

            load_ruleset(self.engine)  # an unknown --engine is an error now, not after the conversion
        return soc, max_shard, self.quant()

    def recorded(self) -> dict:
        """The options that shape the output (and so belong in the manifest and the resume key)."""
        quant = self.quant()
        layout = "quantized" if quant is not None else self.layout
        max_shard = parse_size(self.max_shard_size, _shard_size_error(self.max_shard_size))
        return {"soc": self.soc, "dtype": self.dtype, "max_shard_size": max_shard,
                "on_overflow": self.on_overflow, "layout": layout, "mtp": self.mtp,
                "arch_specs": [str(Path(p).resolve()) for p in self.arch_specs],
                **({"tp": self.tp, "nz": self.nz} if layout == "packed" else {}),
                **(quant.recorded() if quant is not None else {})}
