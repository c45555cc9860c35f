"""User errors as one line: `friendly` turns the project's errors, a Ctrl-C and a SIGTERM into
one `error:` line and the shell's exit code; `OneLineUsage` does the same for click's usage
errors (an unknown option, a value of the wrong type). Never a traceback for a user's mistake."""

from __future__ import annotations

import functools
import signal
import sys
import threading

import typer
from typer.core import TyperGroup

from flowarena.core.errors import FlowArenaError

try:  # typer from 0.26 carries its own copy of click, whose exceptions are not click's
    from typer._click import exceptions as click_errors
except ImportError:  # pragma: no cover - older typer, on click
    from click import exceptions as click_errors


class OneLineUsage(TyperGroup):
    """click's usage errors (an unknown option, a value of the wrong type or out of range) as
    one `error:` line, with click's exit code 2, instead of a framed box."""

    def main(self, *args, standalone_mode: bool = True, **kwargs):
        if not standalone_mode:
            return super().main(*args, standalone_mode=False, **kwargs)
        try:
            code = super().main(*args, standalone_mode=False, **kwargs)
        except click_errors.NoArgsIsHelpError as e:  # `bench` alone: the help, as before
            typer.echo(e.format_message())
            sys.exit(e.exit_code)
        except click_errors.ClickException as e:
            ctx = getattr(e, "ctx", None)
            see = f" (see `{ctx.command_path} --help`)" if ctx is not None else ""
            typer.echo(f"error: {' '.join(e.format_message().split())}{see}", err=True)
            sys.exit(e.exit_code)
        except typer.Abort:
            sys.exit(130)
        sys.exit(code if isinstance(code, int) else 0)


class BadInput(FlowArenaError, ValueError):
    """A user error detected by the CLI itself."""


class Stopped(KeyboardInterrupt):
    """SIGTERM (a scheduler's, `kill`'s) raised in the main thread: it unwinds like Ctrl-C, so
    that `bench run` marks its manifest "stopped" and the user reads one line."""


def _raise_stopped(signum, _frame) -> None:
    signal.signal(signum, signal.SIG_DFL)  # a second SIGTERM ends the process at once
    raise Stopped


RESUMABLE = ("run", "pretrain")  # the commands whose rerun continues where they stopped


def friendly(fn):
    """Turn the project's user-facing errors into one line and exit code 1 (Ctrl-C: 130,
    SIGTERM: 143, as the shell reports a process the signal ended)."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        # Python's default leaves SIGTERM fatal: no line, no cleanup. Only the main thread may
        # install a handler (a command called from another thread keeps the default).
        main = threading.current_thread() is threading.main_thread()
        term = signal.signal(signal.SIGTERM, _raise_stopped) if main else None
        try:
            return fn(*args, **kwargs)
        except Stopped:
            how = "; the same command resumes the run" if fn.__name__ in RESUMABLE else ""
            typer.echo(f"error: stopped by SIGTERM{how}", err=True)
            raise typer.Exit(143) from None
        except FlowArenaError as e:
            typer.echo(f"error: {e}", err=True)
            raise typer.Exit(1) from None
        except OSError as e:  # unwritable output directory, disk full
            typer.echo(f"error: {e.strerror or e}: {e.filename or ''}".rstrip(": "), err=True)
            raise typer.Exit(1) from None
        except KeyboardInterrupt:  # Ctrl-C: every file is written atomically, so nothing half-written
            typer.echo("error: interrupted; `bench run` and `bench pretrain` continue where they stopped "
                       "when run again", err=True)
            raise typer.Exit(130) from None
        finally:
            if term is not None:
                signal.signal(signal.SIGTERM, term)
    return wrapper
