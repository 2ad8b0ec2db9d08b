"""Convert an official CRATE / CRATE demo / CRATE-alpha checkpoint to an export folder:

    python -m crate_vision.convert SRC DST [--heads K] [--variant auto|crate|demo|alpha] [--overwrite]

Reads the official training checkpoint ({"state_dict": ...} with "module." keys), the demo checkpoint
({"model": ...}), a bare state_dict or CRATE-alpha torch weights; infers width, depth, patch, image size
and classes from the shapes; the number of heads comes from the preset of the same width and depth,
else from --heads. DST must be absent, empty or a previous export (else --overwrite, which deletes
nothing it did not write). Errors: one line ``PROG: error: ...``, exit status 2.
"""

from __future__ import annotations

from crate_core.convert import converter_main

from .official import VARIANTS, load_official


def _arguments(parser) -> None:
    parser.add_argument("--variant", choices=VARIANTS, default="auto")
    parser.add_argument("--in-channels", type=int, default=3)


def main(argv: list[str] | None = None) -> int:
    return converter_main(
        "crate_vision.convert", __doc__, load_official, argv, family="vision", add_arguments=_arguments,
        options=lambda a: {"variant": a.variant, "in_channels": a.in_channels},
    )


if __name__ == "__main__":
    raise SystemExit(main())
