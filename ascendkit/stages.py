"""The stages `ascendkit gate` and `ascendkit demo` both run: convert + verify, check_ops, smoke, bench.

Each stage is one function that does the work and returns what it found; neither judges nor prints
(the gate turns results into policy rules, the demo into tables). Both pipelines call the same
functions so that what the demo shows is what the gate decides on: the same conversion and checked
verification, the same operator check, the same served model under the same load, the same bench.

Heavy packages (torch, transformers, the converter, the runtime) are imported inside each stage, so
that `ascendkit --help` and the policy's checks stay fast.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ascend_convert.verify import VerifyReport
    from opcheck.check import CheckResult

#: run_smoke's report (the JSON `ascendkit smoke --json` prints); both pipelines keep it as it is
SmokeReport = dict[str, Any]
#: run_bench's report (the JSON `ascendkit bench --json` prints)
BenchReport = dict[str, Any]


@dataclass
class Conversion:
    """A converted directory: what its manifest says and, once verified, the checked verification.
    `action` says whether this run made it ("converted") or found it made ("verified"); `source` is
    what its tensors are compared with (None: the manifest's source is gone)."""

    output: Path
    source: Path | None
    action: str
    manifest: dict[str, Any]
    verify: VerifyReport | None = None
    #: the conversion's source reader, still open: verify reads the source through it instead of
    #: opening it again (seconds for a GGUF), then lets it go
    reader: Any = field(default=None, repr=False)

    @property
    def target(self) -> dict[str, Any]:
        """The manifest's target: soc, dtype, layout and quantize as converted."""
        return self.manifest["target"]

    @property
    def quantized(self) -> bool:
        return bool(self.target.get("quantize"))


def is_converted(model: Path) -> bool:
    """A directory this toolkit converted (it has a manifest): verified, not converted again."""
    from ascend_convert.manifest import MANIFEST_NAME

    return (Path(model) / MANIFEST_NAME).is_file()


def is_brought(model: Path) -> bool:
    """A quantized directory made elsewhere (msModelSlim's output, or by hand): it has a quantization
    description and no manifest. Deployed as it is: preflight checks it, nothing converts it."""
    from ascend_convert.manifest import MANIFEST_NAME

    model = Path(model)
    return (model.is_dir() and not (model / MANIFEST_NAME).is_file()
            and any(model.glob("quant_model_description*.json")))


def convert(source: Path, output: Path, *, label: str, progress: bool, **options: Any) -> Conversion:
    """Convert `source` into `output`; `options`: ConvertOptions' fields. Not yet verified: the
    pipelines record where the output is before verifying it, so an error there still names it."""
    from ascend_convert.converter import ConvertOptions
    from ascend_convert.converter import convert as run_convert
    from ascend_convert.progress import RichReporter

    result = run_convert(source, output, ConvertOptions(**options), RichReporter(label, enabled=progress))
    return Conversion(output, source, "converted", result.manifest, reader=result.plan.reader)


def preflight(model: Path, *, soc: str, dtype: str, tp: int = 1, ep: int = 1, engine: str = "vllm-ascend",
              nz_mode: int | None = None, allowed: list[dict] | None = None):
    """`ascendkit preflight` on `model` for the deployment: a `PreflightResult`."""
    from ascend_convert.preflight.run import run_preflight

    return run_preflight(model, soc=soc, dtype=dtype if dtype in ("bfloat16", "float16") else "auto", tp=tp, ep=ep,
                         engine=engine, nz_mode=nz_mode, allowed=allowed)


def open_converted(model: Path) -> Conversion:
    """An already converted directory, with the source its manifest names if that is still there."""
    from ascend_convert.manifest import read_manifest, recorded_source

    manifest = read_manifest(model)
    return Conversion(model, recorded_source(manifest), "verified", manifest)


def verify(conversion: Conversion, *, against_source: bool = True) -> VerifyReport:
    """Every file's sha256 and, `against_source`, every tensor against its checked cast of the source.
    Every mismatch is collected: a tampered file is a result to judge, not an error."""
    from ascend_convert.verify import verify as run_verify

    source = conversion.source if against_source else None
    conversion.verify = run_verify(conversion.output, source=source, source_reader=conversion.reader,
                                   stop_at_first=False)
    conversion.reader = None  # read once: not held open while the model is served
    return conversion.verify


def check_ops(model: Path, target: str, *, soc: str, **options: Any) -> CheckResult:
    """check_ops on `model`'s transformers model (`target` "hf") or on the runtime's own model built
    from its config ("runtime"); `options`: run_check's (dtype, version, manifest_file, seq_len, allowed)."""
    from opcheck.check import run_check

    return run_check(str(model), target, soc=soc, **options)


def smoke(model: Path, *, prompts: list[tuple[str, str]] | None, max_tokens: int, measures: Mapping[str, Any],
          runtime: Mapping[str, Any], endpoint: Mapping[str, Any] | None = None) -> SmokeReport:
    """Serve `model` over HTTP (or, `endpoint` given, use that deployment of it: url, served_model,
    api_key, tokenizer_dir), ask `prompts` ((kind, text) pairs) and compare the greedy answers with
    transformers (an unquantized model: on the same weights; a quantized one: with the source its
    manifest names), then run a concurrent load and the stability figures. `measures`: smoke's
    `Measures` fields (requests, concurrency, prompt_len, load_tokens, sessions, turns, long_context);
    `runtime`: the engine's options (device, max_num_seqs, kv_cache_memory, tensor_parallel_size)."""
    from runtime.engine.options import engine_kwargs
    from runtime.evaluation.smoke import Measures, run_endpoint_smoke, run_smoke

    if endpoint is not None:
        return run_endpoint_smoke(directory=model, max_tokens=max_tokens, measures=Measures(**measures),
                                  prompts=prompts, **endpoint)
    return run_smoke(model, max_tokens=max_tokens, measures=Measures(**measures), prompts=prompts,
                     **engine_kwargs(**runtime))


def bench(model: Path, *, device: str, progress: bool, **options: Any) -> BenchReport:
    """The benchmark on `model`: workloads beside their baselines, or (`sweep_sizes`) the batch-size
    sweep; `options`: run_bench's."""
    from runtime.evaluation.bench.runner import run_bench

    return run_bench(model, device=device, progress=progress, **options)
