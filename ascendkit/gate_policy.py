"""The gate's policy file (`ascend-gate.toml`): what a model must satisfy before it may ship.

Parsed with `tomllib` and checked with pydantic models that forbid unknown keys and coerce nothing
(a `"16"` where a number belongs is an error, not a 16), so a typo in CI fails loudly instead of
silently dropping a rule. Every error is one line naming the file and the key:
`ascend-gate.toml: performance.min_throughput: unknown key (known: max_memory_gb, ...)`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar, Literal

import tomllib
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from ascend_common.errors import UserError
from ascend_common.soc import SOCS
from opcheck.manifests import DEFAULT_TORCH_NPU


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class Target(_Section):
    """Where the model goes: the chip, the dtype its weights must have, the quantization, and the
    torch_npu release the NPU runs (operators are checked against that release's kernels)."""

    soc: Literal["ascend910b", "ascend910a", "ascend310p"]
    dtype: Literal["bfloat16", "float16", "float32"]
    quantize: Literal["none", "w8a16", "w8a8", "w8a8-dynamic"] = "none"
    torch_npu: str = DEFAULT_TORCH_NPU
    tp: int = Field(default=1, ge=1)  # the deployment's tensor-parallel size (preflight's TP rules)
    ep: int = Field(default=1, ge=1)  # its expert-parallel size

    @field_validator("torch_npu")
    @classmethod
    def _a_torch_npu_release(cls, value: str) -> str:
        if value == "onnx":  # a shipped manifest's name, but check_ops' ATC target, not a torch_npu release
            raise ValueError("onnx is check_ops' ATC (ONNX) target, not a torch_npu release")
        return value


class Convert(_Section):
    """How `gate` converts a source checkpoint (an already converted directory is verified instead)."""

    on_overflow: Literal["fail", "clamp"] = "fail"
    verify_source: bool = True  # re-read the source and require every tensor's checked cast
    mtp: Literal["keep", "quantize", "drop"] = "keep"  # `convert --mtp`: a checkpoint's multi-token-prediction layers


class _Accepted(_Section):
    """An accepted op or finding: each needs a reason that says something."""

    reason: str = Field(min_length=1)
    _what: ClassVar[str] = "entry"

    @field_validator("reason")
    @classmethod
    def _reason_says_something(cls, value: str) -> str:
        if not value.strip():
            raise ValueError(f"every accepted {cls._what} needs a reason")
        return value


class AllowedOp(_Accepted):
    op: str = Field(min_length=1)
    kind: Literal["fallback", "unsupported"] | None = None
    _what: ClassVar[str] = "op"


class AllowedFinding(_Accepted):
    rule: str = Field(min_length=1)
    subject: str = "*"  # a glob over the finding's subject (`model.layers.*.mlp.experts`)
    _what: ClassVar[str] = "finding"


class Preflight(_Section):
    """Would the target engine load the converted directory (`ascendkit preflight`'s rules)?"""

    check: bool = True
    engine: str = "vllm-ascend"  # NAME[@RELEASE]: the shipped rule set
    strict: bool = False  # warnings fail too
    nz_mode: int | None = Field(default=None, ge=0, le=2)  # VLLM_ASCEND_ENABLE_NZ (None: the engine's default)
    allow: list[AllowedFinding] = []


class Ops(_Section):
    model: bool = True  # check the transformers model of the converted checkpoint
    runtime: bool = True  # check the runtime's own model (what smoke-serve runs)
    seq_len: int = Field(default=16, ge=1)
    manifest: str | None = None  # a manifest from `ascendkit manifest build` instead of the shipped one
    allow: list[AllowedOp] = []


class Prompt(_Section):
    prompt: str = Field(min_length=1)
    chat: bool = False  # send it through the chat template (/v1/chat/completions)
    expect: list[str] = []  # substrings the greedy answer must contain
    ignore_case: bool = False


class Load(_Section):
    requests: int = Field(default=16, ge=1)
    concurrency: int = Field(default=4, ge=1)
    prompt_len: int = Field(default=64, ge=1)
    tokens: int = Field(default=32, ge=2)
    sessions: int = Field(default=4, ge=0)  # conversations interleaved turn by turn (session switch; 0: none)
    turns: int = Field(default=3, ge=2)


class Smoke(_Section):
    """Serve the converted model here. `check = false` where this machine cannot (a 671B model on a CPU
    CI runner): the gate says the smoke rules were not decided here, and [performance], measured on
    the smoke load, must then be empty."""

    check: bool = True
    max_tokens: int = Field(default=24, ge=1)
    same_weights: bool = True  # runtime tokens = transformers' on the converted weights (unquantized models)
    min_greedy_agreement: float | None = Field(default=None, ge=0, le=1)  # with the source, token-weighted
    prompts: list[Prompt] = []
    load: Load = Load()


class Performance(_Section):
    """Floors and ceilings on the smoke test's concurrent load (the seed article's table), and its
    stability claims: TPOT's spread, the session switch, long context answered."""

    min_throughput_tok_s: float | None = Field(default=None, gt=0)
    max_ms_per_token: float | None = Field(default=None, gt=0)
    max_ttft_p99_ms: float | None = Field(default=None, gt=0)
    max_tpot_p50_ms: float | None = Field(default=None, gt=0)
    max_tpot_p99_ms: float | None = Field(default=None, gt=0)
    max_tpot_std_ms: float | None = Field(default=None, gt=0)
    max_session_switch_ms: float | None = Field(default=None, gt=0)  # a follow-up turn's TTFT, p99
    max_memory_gb: float | None = Field(default=None, gt=0)
    long_context: bool = False  # requests at 50/90/100% of max_model_len answered beside the load


class Deployment(_Section):
    """A running deployment (vllm-ascend, vLLM, MindIE: any OpenAI-compatible server) that the smoke
    stage asks instead of serving the model here; `--endpoint` on the command line wins."""

    endpoint: str | None = Field(default=None, pattern=r"^https?://\S+$")
    model: str | None = None  # the served model's name [default: the only one /v1/models lists]
    api_key_env: str = "ASCENDKIT_API_KEY"  # the variable that holds its key (never the key itself)
    tokenizer: str | None = None  # a tokenizer directory [default: the converted MODEL's]; relative to the policy


class Runtime(_Section):
    device: Literal["auto", "cpu", "cuda", "npu", "ascend"] = "auto"
    max_num_seqs: int = Field(default=64, ge=1)
    kv_cache_memory: str = "1GiB"
    tensor_parallel_size: int = Field(default=1, ge=1)


class Sweep(_Section):
    """Optional: a batch-size sweep, drawn (with matplotlib) and linked from the summary."""

    sizes: list[int] = Field(min_length=1)
    tpot_ms: float = Field(default=100.0, gt=0)
    prompt_len: int = Field(default=64, ge=1)
    new_tokens: int = Field(default=32, ge=2)

    @field_validator("sizes")
    @classmethod
    def _positive(cls, value: list[int]) -> list[int]:
        if any(n < 1 for n in value):
            raise ValueError("batch sizes must be at least 1")
        return sorted(set(value))


class Policy(_Section):
    target: Target
    convert: Convert = Convert()
    preflight: Preflight = Preflight()
    ops: Ops = Ops()
    smoke: Smoke = Smoke()
    performance: Performance = Performance()
    deployment: Deployment = Deployment()
    runtime: Runtime = Runtime()
    sweep: Sweep | None = None

    def allowed_ops(self) -> dict[tuple[str, str | None], str]:
        """The allow list as `opcheck.allow.split` takes it."""
        from opcheck.allow import qualified_op

        return {(qualified_op(a.op), a.kind): a.reason for a in self.ops.allow}


def _key(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        out += f"[{part + 1}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _known(section: type[BaseModel], loc: tuple[Any, ...]) -> str:
    """The keys the section holding `loc` accepts, for an unknown-key message."""
    model: Any = section
    for part in loc[:-1]:
        if isinstance(part, int):
            continue
        annotation = model.model_fields[part].annotation
        model = next((a for a in getattr(annotation, "__args__", (annotation,))
                      if isinstance(a, type) and issubclass(a, BaseModel)), None)
        if model is None:
            return ""
    return ", ".join(model.model_fields)


def describe_error(path: Path, exc: ValidationError) -> str:
    """The first problem, as one line naming the file and the key."""
    err = exc.errors()[0]
    key = _key(err["loc"])
    if err["type"] == "extra_forbidden":
        return f"{path}: {key}: unknown key (known: {_known(Policy, err['loc'])})"
    if err["type"] == "missing":
        return f"{path}: {key}: missing (required)"
    message = err["msg"].removeprefix("Value error, ")
    got = err.get("input")
    shown = "" if isinstance(got, dict) else f" (got {got!r})"
    return f"{path}: {key}: {message[0].lower()}{message[1:]}{shown}"


def load_policy(path: Path, endpoint: str | None = None) -> Policy:
    """The policy at `path`, checked; `endpoint`: the command line's --endpoint (a deployment to ask)."""
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError(f"{path}: no such policy file") from None
    except IsADirectoryError:
        raise UserError(f"{path}: is a directory, not a policy file") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise UserError(f"{path}: not valid TOML ({exc})") from None
    try:
        policy = Policy.model_validate(data)
    except ValidationError as exc:
        raise UserError(describe_error(path, exc)) from None
    if not policy.smoke.check and not (endpoint or policy.deployment.endpoint):
        floors = [k for k, v in policy.performance.model_dump().items() if v not in (None, False)]
        if floors:
            raise UserError(f"{path}: performance.{floors[0]}: measured on the smoke load, which smoke.check = "
                            f"false does not run here (remove it, set smoke.check = true, or give the deployment's "
                            f"endpoint)")
    tokenizer = policy.deployment.tokenizer
    if tokenizer is not None and not (path.parent / tokenizer).is_dir():
        raise UserError(f"{path}: deployment.tokenizer: {path.parent / tokenizer}: no such directory (it is "
                        f"relative to the policy file)")
    if policy.preflight.check:
        from ascend_convert.preflight.ruleset import load_ruleset

        try:
            load_ruleset(policy.preflight.engine)
        except UserError as exc:
            raise UserError(f"{path}: preflight.engine: {exc}") from None
    soc = SOCS[policy.target.soc]
    if not soc.supports(policy.target.dtype):
        raise UserError(f"{path}: target.dtype: {soc.name} ({soc.product}) has no {policy.target.dtype}; "
                        f"it supports {', '.join(soc.dtypes)}")
    return policy
