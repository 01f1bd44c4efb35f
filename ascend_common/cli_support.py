"""What every console script shares: one-line errors without tracebacks (unless --debug), exit codes.

Exit codes: 0 success, 1 a check failed (verify mismatch, overflow), 2 bad input or usage,
3 an internal error (a bug: rerun with --debug and report the traceback), 130 interrupted.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import click

from .errors import UserError, first_line

debug_option = click.option("--debug", is_flag=True, expose_value=False, is_eager=True,
                             help="Show full tracebacks on errors.")


def output_file(ctx: click.Context, param: click.Parameter, path: Path | None) -> Path | None:
    """Click callback of an option naming a file to write: a directory that is not there, or a
    directory given as the file, is a one-line error before the work starts rather than after
    minutes of it (the write itself is atomic and would only fail at the end)."""
    if path is None:
        return None
    option = max(param.opts, key=len)
    if not path.parent.is_dir():
        raise UserError(f"{option} {path}: no such directory {path.parent}")
    if path.is_dir():
        raise UserError(f"{option} {path}: is a directory, not a file name")
    return path


REPORT_FORMATS = ("table", "json", "sarif", "junit", "markdown")


def report_options(allow_entry: str):
    """The options every check shares (check_ops, preflight): `--format`, `--output`, `--summary-file`
    and `--allow FILE`, whose entries are `allow_entry` (`{op, reason, kind}`)."""
    options = [
        click.option("--format", "fmt", type=click.Choice(REPORT_FORMATS), default="table", show_default=True),
        click.option("--output", type=click.Path(path_type=Path), callback=output_file,
                     help="Write the report here instead of stdout."),
        click.option("--summary-file", type=click.Path(path_type=Path), callback=output_file,
                     help="Also write a markdown summary (for CI)."),
        click.option("--allow", "allow_file", type=click.Path(path_type=Path),
                     help=f"Accepted findings, each with a reason (YAML/JSON: allow: [{allow_entry}])."),
    ]

    def decorate(func):
        for option in reversed(options):
            func = option(func)
        return func
    return decorate


def emit_report(text: str, output: Path | None, summary_file: Path | None = None, summary: str = "") -> None:
    """A check's report to `--output` (atomically) or stdout, and its markdown to `--summary-file`."""
    from .atomic_write import write_text_atomic

    if summary_file is not None:
        write_text_atomic(summary_file, summary)
    if output is not None:
        write_text_atomic(output, text)
    else:
        click.echo(text, nl=False)


_skip_teardown = False


def skip_teardown() -> None:
    """Called by a command that leaves nothing to clean up but a large heap (check_ops: a 7B model's
    exported graphs take ~2 s to free at interpreter exit): after its result is printed and its
    files closed, the process exits at once instead of tearing the heap down."""
    global _skip_teardown
    _skip_teardown = True


def debugging(args: list[str] | None = None) -> bool:
    """--debug on the command line (or ASCENDKIT_DEBUG=1): tracebacks instead of one-line errors."""
    args = sys.argv[1:] if args is None else args
    return "--debug" in args or os.environ.get("ASCENDKIT_DEBUG") == "1"


def run_main(command: click.Command, args: list[str] | None = None, prog_name: str | None = None) -> None:
    argv = list(sys.argv[1:] if args is None else args)
    debug = debugging(argv)
    try:
        code = command.main(args=argv, prog_name=prog_name, standalone_mode=False)
    except click.exceptions.Exit as exc:
        code = exc.exit_code
    except click.ClickException as exc:
        exc.show()
        code = exc.exit_code
    except (KeyboardInterrupt, click.exceptions.Abort):
        click.echo("error: interrupted (a conversion can be finished with --resume)", err=True)
        code = 130
    except UserError as exc:
        if debug:
            raise
        click.echo(f"error: {exc}", err=True)
        code = exc.exit_code
    except Exception as exc:  # noqa: BLE001 - the last line of defence: one line, not a traceback
        if debug:
            raise
        click.echo(f"error: internal error: {type(exc).__name__}: {first_line(exc)} "
                   f"(rerun with --debug for the traceback)",
                   err=True)
        code = 3
    code = code if isinstance(code, int) else 0
    if _skip_teardown:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    sys.exit(code)
