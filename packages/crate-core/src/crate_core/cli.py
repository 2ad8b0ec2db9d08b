"""The start-up every tool shares: one error path, ``--set KEY=VALUE`` model settings, and a stop for a
GPU-sized run started without a GPU.

    if __name__ == "__main__":
        crate_core.cli.run(main)          # main(argv) parses its own flags

Error path. Caught as user mistakes: ValueError (which covers UnknownModelError, WrongTaskError, a damaged
checkpoint, a busy run folder, bad configuration values and UnicodeDecodeError), FileNotFoundError,
NotADirectoryError, IsADirectoryError, PermissionError and ConnectionError (no network). They print
``TOOL: error: MESSAGE`` and exit 2, as argparse does for a bad flag; ``--debug`` anywhere on the command
line (or CRATE_DEBUG=1) shows the traceback instead (``add_debug_arg`` lists it in a tool's --help). A run
stopped by SIGINT / SIGTERM prints how to resume and exits 128 + signal; a second signal that aborts a run,
a Ctrl-C during start-up and a full disk (ENOSPC) are one line too. Anything else (a bug) keeps its traceback.

Model settings. Every training tool takes ``--set KEY=VALUE`` (repeatable) for any field of its model's
config dataclass; ``parse_sets`` types each value from the field's annotation, and the tool passes the
result to ``crate_core.create(name, **sets)``, whose config ``__post_init__`` (``TrunkConfig``'s for the
trunk) refuses a field that does not apply to the chosen block.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import difflib
import errno
import os
import signal
import sys
import types
import typing
import warnings
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

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
    from .train.interrupt import TrainingAborted, TrainingInterrupted

    try:
        main(args)
    except TrainingInterrupted as e:
        print(f"{name}: {e}", file=sys.stderr, flush=True)
        raise SystemExit(128 + e.signum) from None
    except KeyboardInterrupt as e:  # a second signal in fit (TrainingAborted), or Ctrl-C outside it (start-up)
        with contextlib.suppress(ValueError):  # (not the main thread)
            signal.signal(signal.SIGINT, signal.SIG_IGN)  # a forwarding parent's copy must not add a traceback
        if debug:
            raise
        if isinstance(e, TrainingAborted):
            print(f"{name}: {one_line(e)}", file=sys.stderr, flush=True)
            raise SystemExit(128 + e.signum) from None
        print(f"{name}: interrupted by SIGINT outside the training loop (no step in progress); checkpoints "
              "on disk are unchanged", file=sys.stderr, flush=True)
        raise SystemExit(128 + signal.SIGINT) from None
    except USER_ERRORS as e:
        if debug:
            raise
        print(f"{name}: error: {one_line(e)} (--debug shows the traceback)", file=sys.stderr, flush=True)
        raise SystemExit(2) from None
    except OSError as e:  # a full disk is the user's to fix, not a bug
        if debug or e.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
        print(f"{name}: error: {one_line(e)} (--debug shows the traceback)", file=sys.stderr, flush=True)
        raise SystemExit(2) from None


def add_debug_arg(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """List ``--debug`` in a tool's --help (and its sub-commands'). ``run`` reads and removes the flag before
    ``main`` parses, so the parser only documents it (and accepts it when main is called directly)."""
    parser.add_argument("--debug", action="store_true", help="on an error, show the traceback instead of one line")
    return parser


# ---- --set KEY=VALUE -----------------------------------------------------------------------------
def add_set_arg(parser: argparse.ArgumentParser) -> None:
    """Add ``--set KEY=VALUE`` (repeatable; dest ``set``, a list of strings) to a tool's parser or group."""
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="set a field of the model's config (repeatable), e.g. --set step_size=0.2 --set block=tost",
    )


_TRUE, _FALSE = ("true", "1", "yes", "on"), ("false", "0", "no", "off")


def _field_type(hint: Any) -> tuple[type, bool]:
    """(base type, optional) of an annotation ``T`` or ``T | None``."""
    args = typing.get_args(hint)
    if (typing.get_origin(hint) in (typing.Union, types.UnionType)) and type(None) in args:
        rest = [a for a in args if a is not type(None)]
        return (rest[0] if len(rest) == 1 else hint), True
    return hint, False


def _typed(text: str, hint: Any) -> Any:
    """``text`` as a value of annotation ``hint``; ValueError naming the expected type."""
    kind, optional = _field_type(hint)
    if optional and text.strip().lower() in ("none", "null"):
        return None
    if kind is bool:
        low = text.strip().lower()
        if low in _TRUE or low in _FALSE:
            return low in _TRUE
        raise ValueError(f"expected true or false, got {text!r}")
    if kind is int:
        try:
            return int(text)
        except ValueError:
            raise ValueError(f"expected an integer, got {text!r}") from None
    if kind is float:
        try:
            return float(text)
        except ValueError:
            raise ValueError(f"expected a number, got {text!r}") from None
    if kind is str:
        return text
    raise ValueError(f"a field of type {hint} cannot be set from the command line")


def parse_sets(
    pairs: Sequence[str] | None,
    config_cls: type,
    flags: Mapping[str, Any] | None = None,
    fixed: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """``--set KEY=VALUE`` pairs -> ``{field: value}`` for the dataclass ``config_cls``.

    Each value is typed from the field's annotation: ``int`` ("3"), ``float`` ("0.2", "1e-3"), ``bool``
    ("true" / "false", also 1 / 0, yes / no, on / off), ``str`` (the text as given) and ``T | None``
    ("none" -> None). ``flags`` are a tool's named model flags, ``{field: value}`` with None for "not
    given" (``--mask-mode drop`` is ``--set mask_mode=drop``); they come first, so a ``--set`` of the same
    field wins, as a later pair wins over an earlier one. ``fixed`` names the fields the tool derives itself
    (``{"num_classes": "the data (--num-classes)"}``). A pair without ``=``, a key that is not a field, a
    fixed field, or a value that does not parse is one ValueError naming the pair. Whether a field applies
    to the chosen block is the config's own check (``TrunkConfig.__post_init__``), run when it is built.
    """
    if not dataclasses.is_dataclass(config_cls):
        raise TypeError(f"parse_sets needs a dataclass config class, got {config_cls!r}")
    hints = typing.get_type_hints(config_cls)
    names = [f.name for f in dataclasses.fields(config_cls)]
    fixed = dict(fixed or {})

    def check_key(key: str, where: str) -> None:
        if key not in names:
            close = difflib.get_close_matches(key, names, n=1)
            hint = f"; did you mean {close[0]}?" if close else ""
            raise ValueError(
                f"{where}: {config_cls.__name__} has no field {key!r}{hint} (its fields: {', '.join(names)})"
            )
        if key in fixed:
            raise ValueError(f"{where}: {key} is set by {fixed[key]}, not by --set")

    out: dict[str, Any] = {}
    for key, value in (flags or {}).items():
        if value is not None:
            check_key(key, f"--{key.replace('_', '-')}")
            out[key] = value
    for pair in pairs or []:
        key, sep, text = pair.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ValueError(f"--set {pair!r}: expected KEY=VALUE, e.g. --set step_size=0.2")
        check_key(key, f"--set {pair}")
        try:
            out[key] = _typed(text, hints[key])
        except ValueError as e:
            raise ValueError(f"--set {pair}: {key} {e}") from None
    return out


# ---- a GPU-sized run started without a GPU -------------------------------------------------------
CPU_FLOPS = 1e11  # FLOP/s: a generous figure for fp32 training on a few CPU cores
CPU_LIMIT_HOURS = 1.0


class TooSlowForCPUError(ValueError):
    """A run that would take hours on the CPU was started without asking for the CPU."""


class SlowOnCPUWarning(UserWarning):
    """A run sized for a GPU goes ahead on the CPU because --device cpu asked for it."""


def check_cpu_budget(
    params: int,
    tokens: float,
    device: str = "auto",
    what: str = "this run",
    cpu_command: str | None = None,
    steps: int | None = None,
) -> float:
    """Estimated CPU hours of a run, ``6 x params x tokens / CPU_FLOPS`` (the 6N rule; CRATE's ISTA costs a
    bit more, so it is a lower bound); ``tokens`` = every token (or image patch) the run processes.

    With no CUDA device and ``device == "auto"`` a run over CPU_LIMIT_HOURS raises TooSlowForCPUError
    naming the estimate and what to change; ``device == "cpu"`` (asked for) only warns. With ``steps`` (the
    run's --steps; ``what`` then names the model) the message names the step count and the largest one that
    fits CPU_LIMIT_HOURS, and ``cpu_command`` is one more way out (e.g. "--model crate-gpt-nano"); without
    it, ``cpu_command`` is what to run on a CPU instead.
    """
    import torch

    hours = 6 * params * tokens / CPU_FLOPS / 3600
    if torch.cuda.is_available() or device == "cuda" or hours <= CPU_LIMIT_HOURS:
        return hours
    if steps:
        fits = int(steps * CPU_LIMIT_HOURS / hours)  # the cost is linear in the steps
        msg = (
            f"--steps {steps} of {what} ({params / 1e6:.1f}M parameters, {tokens / steps:,.0f} tokens a step) would "
            f"take at least {hours:,.1f} hours on this CPU (no CUDA device here; ~{CPU_FLOPS / 1e9:.0f} GFLOP/s)"
        )
        ways = ([f"--steps <= {fits}"] if fits else []) + ([cpu_command] if cpu_command else []) + ["a GPU"]
        hint = "; use " + ", or ".join(ways)
    else:
        msg = (
            f"{what} ({params / 1e6:.1f}M parameters, {tokens:,.0f} tokens) is sized for a GPU: no CUDA device here, "
            f"and at ~{CPU_FLOPS / 1e9:.0f} GFLOP/s it would take at least {hours:,.1f} hours on this CPU"
        )
        hint = f". On a CPU run {cpu_command}" if cpu_command else ""
    if device == "cpu":
        warnings.warn(SlowOnCPUWarning(msg + " (--device cpu was asked for: going ahead)"), stacklevel=2)
        return hours
    raise TooSlowForCPUError(msg + hint + "; or pass --device cpu to run it here anyway")
