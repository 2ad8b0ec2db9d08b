"""Convert a released CRATE-LM checkpoint (crate-lm repository, nanoGPT layout) to an export folder:

    python -m crate_text.convert SRC DST [--heads K] [--overwrite]

The layouts (overcomplete, square) and the loader are crate_text.official; this module is only the command
line, and the package does not import it, so ``python -m`` runs it once, without runpy's "found in
sys.modules" warning. DST must be absent, empty or a previous export; --overwrite writes next to other files
and replaces only a previous export's own files. Errors: one line ``crate_text.convert: error: ...``, exit 2.
"""

from __future__ import annotations

from crate_core.convert import converter_main

from .official import load_official


def main(argv: list[str] | None = None) -> int:
    return converter_main("crate_text.convert", __doc__, load_official, argv, family="text")


if __name__ == "__main__":
    raise SystemExit(main())
