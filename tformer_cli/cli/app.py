"""The Typer application and its one error boundary.

Every command lives in tformer_cli/cli/<family>.py and registers itself here.  Command
modules import nothing heavy at module level, so `tformer --help` never imports torch.
Exit codes: 0 ok, 1 runtime error, 2 usage/config error, 130 interrupted.
Set TFORMER_DEBUG=1 to see tracebacks.
"""

from __future__ import annotations

import errno
import os
import sys

import typer

from tformer_cli import __version__
from tformer_cli.cli import bench, experiments, finetune, hf, info, inside, sample, seq2seq, train

app = typer.Typer(
    name="tformer",
    help="A command-line laboratory for decoder-only (GPT-style) transformers.\n\n"
    "Train a small GPT, sample from it, and measure what each part of the architecture buys you.\n\n"
    "Example: tformer train && tformer sample runs/<RUN> --prompt 'The '",
    no_args_is_help=True,
    add_completion=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"tformer {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Show the version."),
) -> None:
    pass


# One module per command family, each with register(app); none imports torch at module level,
# so `tformer --help` stays instant.
for _module in (train, finetune, seq2seq, bench, info, inside, sample, experiments, hf):
    _module.register(app)


# OS errors a user's path or machine can cause: (what, hint, exit code), the path appended.
_OS_ERRORS = {
    errno.ENAMETOOLONG: ("a file name is too long (at most 255 bytes per name)", "choose a shorter name", 2),
    errno.ENOTDIR: ("a part of this path is a file, not a directory", "check the path", 2),
    errno.EISDIR: ("this path is a directory, not a file", "check the path", 2),
    errno.ENOENT: ("no such file or directory", "check the path", 2),
    errno.EROFS: ("the file system is read-only", "write somewhere else (--out), or remount it writable", 1),
    errno.EACCES: ("permission denied", "check the permissions, or choose another path", 1),
    errno.EPERM: ("operation not permitted", "check the permissions, or choose another path", 1),
    errno.ELOOP: ("too many symbolic links", "check the path", 2),
    errno.EEXIST: ("a file is in the way", "move it, or choose another path", 2),
}


def _err(message: str, hint: str | None = None) -> None:
    sys.stderr.write(f"error: {message}\n")
    if hint:
        sys.stderr.write(f"hint: {hint}\n")


def main(argv: list[str] | None = None) -> None:
    """Console entry point: run the app, turn every known failure into one line and an exit code."""
    from tformer_cli.errors import Interrupted, TformerError

    # Typer re-exports click's exception types (newer Typer vendors click); find the base
    # class of usage errors through a public name rather than importing click itself.
    click_exception = next(c for c in typer.BadParameter.__mro__ if c.__name__ == "ClickException")
    debug = os.environ.get("TFORMER_DEBUG") == "1"
    try:
        code = app(args=argv, prog_name="tformer", standalone_mode=False)
        if code == 130:  # Typer turns a Ctrl-C outside our own handlers into a returned 130
            _err("interrupted")
        sys.exit(code if isinstance(code, int) else 0)
    except typer.Exit as e:
        sys.exit(e.exit_code)
    except typer.Abort:
        _err("interrupted")
        sys.exit(130)
    except click_exception as e:
        if debug:
            raise
        _err(e.format_message(), "run with --help for usage")
        sys.exit(2)
    except TformerError as e:
        if debug and not isinstance(e, Interrupted):
            raise
        if str(e):  # Interrupted carries no message: the command has printed how to resume
            _err(str(e), e.hint)
        sys.exit(e.exit_code)
    except KeyboardInterrupt:
        if debug:
            raise
        _err("interrupted")
        sys.exit(130)
    except Exception as e:  # the last line of defence: one line, never a traceback
        if debug:
            raise
        if type(e).__name__ == "OutOfMemoryError":
            _err("the GPU ran out of memory",
                 "use a smaller train.batch_size or model.block_size, or raise train.grad_accum")
            sys.exit(1)
        if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT):
            _err(f"the disk is full ({e.filename or 'while writing'})", "free some space and try again")
            sys.exit(1)
        if isinstance(e, OSError) and e.errno in _OS_ERRORS:
            what, hint, code = _OS_ERRORS[e.errno]
            path = str(e.filename) if e.filename is not None else "a file"
            _err(f"{what}: {path if len(path) <= 200 else path[:197] + '...'}", hint)
            sys.exit(code)
        if isinstance(e, MemoryError) or (isinstance(e, RuntimeError) and "DefaultCPUAllocator" in str(e)):
            _err("out of memory", "use a smaller train.batch_size, model.block_size or model.d_model")
            sys.exit(1)
        _err(f"unexpected {type(e).__name__}: {e}", "set TFORMER_DEBUG=1 to see the traceback")
        sys.exit(1)
