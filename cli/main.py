"""Entry point of `compact`: runs a command and turns every known error into one line."""

from __future__ import annotations

import os
import signal
import sys
import threading
import traceback

import typer

# numpy's OpenBLAS starts one thread per core that busy-waits after start-up; nothing here
# multiplies matrices, and those threads took CPU time from apply's hashing and copying.
# Set before any command imports numpy; a user's own setting wins.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

from nydus_compact.applier.errors import ApplyError
from nydus_compact.backends.errors import BackendError
from nydus_compact.image.errors import ImageError, ImageUsageError
from nydus_compact.mkimage.errors import BuildError
from nydus_compact.planner.errors import PlanError, UsageError
from nydus_compact.rafs.errors import RafsError
from nydus_compact.reports.errors import ReportError
from nydus_compact.safeio.errors import SafeIOError
from nydus_compact.store.errors import StoreError

from . import commands  # noqa: F401  (registers the commands on the app)
from .app import EXIT_ERROR, EXIT_INTERNAL, EXIT_INTERRUPTED, EXIT_TERMINATED, EXIT_USAGE, app, click_exceptions

USER_ERRORS = (
    RafsError, BackendError, BuildError, PlanError, StoreError, ApplyError, ReportError, SafeIOError, ImageError,
    OSError,
)


# The signals (SIGINT, SIGTERM) the running command was stopped by.
_received: list[int] = []


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised where the program is, so it unwinds and cleans up like Ctrl-C does."""


def _on_signal(signum: int, frame: object) -> None:
    # typer turns KeyboardInterrupt into a silent exit status 130: remember what happened.
    _received.append(signum)
    raise Terminated if signum == signal.SIGTERM else KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in args or os.environ.get("COMPACT_DEBUG") == "1"
    if "--debug" in args:
        args.remove("--debug")
    if threading.current_thread() is not threading.main_thread():  # only the main thread takes signals
        return _run(args, debug)
    # SIGINT stays ignored where the shell ignores it (a background job).
    signums = [signal.SIGTERM]
    if signal.getsignal(signal.SIGINT) is signal.default_int_handler:
        signums.append(signal.SIGINT)
    previous = {signum: signal.signal(signum, _on_signal) for signum in signums}
    _received.clear()
    try:
        rv = _run(args, debug)
    except KeyboardInterrupt:  # a signal between typer's return and here
        rv = EXIT_INTERRUPTED
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    if _received:
        return _interrupted(_received[0])
    return rv


def _run(args: list[str], debug: bool) -> int:
    try:
        rv = app(args=args, prog_name="compact", standalone_mode=False)
    except typer.Exit as exc:
        return exc.exit_code
    except typer.Abort:
        print("compact: aborted", file=sys.stderr)
        return EXIT_ERROR
    except click_exceptions.UsageError as exc:
        if isinstance(exc, click_exceptions.NoArgsIsHelpError):
            return EXIT_USAGE  # the help text was already printed
        command = exc.ctx.command_path if exc.ctx is not None else "compact"
        print(f"{command}: error: {_one_line(exc.format_message())} (see '{command} --help')", file=sys.stderr)
        return EXIT_USAGE
    except ImageUsageError as exc:
        print(f"compact: error: {_one_line(exc)}", file=sys.stderr)
        return EXIT_USAGE
    except click_exceptions.ClickException as exc:
        exc.show(file=sys.stderr)
        return EXIT_ERROR
    except UsageError as exc:
        print(f"compact: error: {_one_line(exc)}", file=sys.stderr)
        return EXIT_USAGE
    except USER_ERRORS as exc:
        if debug:
            traceback.print_exc()
        print(f"compact: error: {_one_line(exc)}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        if not _received:
            _received.append(signal.SIGINT)
        return EXIT_INTERRUPTED
    except Exception as exc:  # a bug: still one line, the traceback on request
        if debug:
            traceback.print_exc()
        print(
            f"compact: internal error: {type(exc).__name__}: {_one_line(exc)} (rerun with --debug for the traceback)",
            file=sys.stderr,
        )
        return EXIT_INTERNAL
    return rv if isinstance(rv, int) else 0


def _interrupted(signum: int) -> int:
    if signum == signal.SIGTERM:
        print("compact: terminated", file=sys.stderr)
        return EXIT_TERMINATED
    print("compact: interrupted", file=sys.stderr)
    return EXIT_INTERRUPTED


def _one_line(exc: BaseException | str) -> str:
    if isinstance(exc, OSError) and exc.filename:
        return f"{exc.filename}: {exc.strerror or exc}"
    return " ".join(str(exc).split()) or type(exc).__name__


def run() -> None:
    sys.exit(main())


if __name__ == "__main__":
    run()
