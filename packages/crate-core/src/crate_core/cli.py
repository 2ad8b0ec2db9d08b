"""One error path for every tool: a user's mistake is one line on stderr and exit status 2.

    if __name__ == "__main__":
        crate_core.cli.run(main)          # main(argv) parses its own flags

Caught as user mistakes: ValueError (which covers UnknownModelError, WrongTaskError, a damaged
checkpoint, a busy run folder, bad configuration values and UnicodeDecodeError), FileNotFoundError,
NotADirectoryError, IsADirectoryError, PermissionError and ConnectionError (no network). They print ``TOOL: error: MESSAGE`` and exit
2, as argparse does for a bad flag; ``--debug`` anywhere on the command line (or CRATE_DEBUG=1) shows
the traceback instead. A run stopped by SIGINT / SIGTERM prints how to resume and exits 128 + signal.
Anything else (a bug) keeps its traceback.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

USER_ERRORS = (ValueError, FileNotFoundError, NotADirectoryError, IsADirectoryError, PermissionError, ConnectionError)


def one_line(err: BaseException) -> str:
    text = " ".join(str(err).split())
    return text or type(err).__name__


def run(main: Callable[[list[str]], object], argv: Sequence[str] | None = None, name: str | None = None) -> None:
    """Call ``main(argv)`` (argv without ``--debug``) and turn user mistakes into one line + exit 2."""
    args = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in args or os.environ.get("CRATE_DEBUG", "") not in ("", "0")
    args = [a for a in args if a != "--debug"]
    name = name or Path(sys.argv[0]).name
    from .train.interrupt import TrainingInterrupted

    try:
        main(args)
    except TrainingInterrupted as e:
        print(f"{name}: {e}", file=sys.stderr, flush=True)
        raise SystemExit(128 + e.signum) from None
    except USER_ERRORS as e:
        if debug:
            raise
        print(f"{name}: error: {one_line(e)} (--debug shows the traceback)", file=sys.stderr, flush=True)
        raise SystemExit(2) from None
