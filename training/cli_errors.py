"""One-line user errors for every command (`centerclip`, `train.py`, `evaluate.py`, `prepare_frames`, `publish`).

    if __name__ == "__main__":
        run_cli("evaluate.py", main)

A user error -- a missing or malformed file, a bad argument or setting (`ValueError`, `FileNotFoundError`), a
full, read-only or forbidden disk and other `OSError`s -- prints one line, `PROG: error: MESSAGE`, and exits
with status 2, as argparse does for a bad flag. Anything else is a bug and keeps its traceback. `--debug` (every
command takes it) or `CENTERCLIP_DEBUG=1` shows the traceback of user errors too. Ctrl-C prints one line and
exits with 130. Importing this module costs nothing: no torch, no Transformers.
"""

from __future__ import annotations

import argparse
import errno
import os
import sys
from collections.abc import Callable, Sequence

DEBUG_ENV = "CENTERCLIP_DEBUG"
USER_ERROR_STATUS = 2  # argparse's status for a bad flag; the same for every user error
INTERRUPTED_STATUS = 130  # 128 + SIGINT, as shells report Ctrl-C
USER_ERRORS: tuple[type[BaseException], ...] = (ValueError, OSError)
# A remedy for the OSErrors a user can fix.
_ERRNO_HINTS = {
    errno.ENOSPC: "free space or write elsewhere",
    errno.EDQUOT: "free space or write elsewhere",
    errno.EROFS: "write elsewhere",
    errno.EACCES: "check the owner and mode, or write elsewhere",
    errno.EPERM: "check the owner and mode, or write elsewhere",
}


def add_debug_flag(parser: argparse.ArgumentParser) -> None:
    """`--debug`: the traceback of a user error too (`run_cli` reads it from the command line)."""
    parser.add_argument("--debug", action="store_true",
                        help=f"show the traceback of a user error too (or set {DEBUG_ENV}=1)")  # fmt: skip


def debug_requested(argv: Sequence[str]) -> bool:
    return "--debug" in argv or os.environ.get(DEBUG_ENV, "").strip().lower() not in ("", "0", "false", "no")


def describe(error: BaseException) -> str:
    """The one line for a user error: its message; for an OSError from the system, the file and a remedy."""
    if isinstance(error, OSError) and error.errno is not None and error.strerror:
        files = [str(name) for name in (error.filename, error.filename2) if name is not None]
        where = f"{' -> '.join(files)}: " if files else ""
        hint = _ERRNO_HINTS.get(error.errno)
        return f"{where}{error.strerror}" + (f" ({hint})" if hint else "")
    message = str(error).strip() or type(error).__name__
    return " ".join(message.splitlines())


def require_model_folder(model: str, flag: str = "--model") -> None:
    """A model given as a local path must be a folder; anything else is taken for a Hub id (`org/name`)."""
    if os.path.isdir(model) or not (model.startswith((".", "/", "~")) or model.count("/") > 1
                                    or os.sep in model.replace("/", "")):  # fmt: skip
        return
    raise FileNotFoundError(f"{flag} {model}: no such model folder; `make demo` trains one into "
                            "outputs/demo/centerclip/final, or give a Hub id (org/name, e.g. "
                            "openai/clip-vit-base-patch32 with cluster overrides)")  # fmt: skip


def run_cli(prog: str, main: Callable[[list[str]], object], argv: Sequence[str] | None = None,
            user_errors: tuple[type[BaseException], ...] | Callable[[], tuple] = ()) -> object:  # fmt: skip
    """Run `main(argv)` (default: `sys.argv[1:]`) as command `prog`: user errors (`USER_ERRORS` plus
    `user_errors`, or what that function returns: it runs only when an error is reported, so the classes can
    live in heavy modules) become one line and exit status 2; bugs and `--debug` keep the traceback."""
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        return main(argv)
    except KeyboardInterrupt:
        if debug_requested(argv):
            raise
        print(f"{prog}: interrupted", file=sys.stderr)
        sys.exit(INTERRUPTED_STATUS)
    except Exception as error:
        extra = () if isinstance(error, USER_ERRORS) else user_errors() if callable(user_errors) else user_errors
        if debug_requested(argv) or not isinstance(error, (*USER_ERRORS, *extra)):
            raise
        print(f"{prog}: error: {describe(error)}", file=sys.stderr)
        sys.exit(USER_ERROR_STATUS)
