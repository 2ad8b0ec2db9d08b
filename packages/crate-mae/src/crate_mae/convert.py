"""Convert an official CRATE-MAE checkpoint (Ma-Lab-Berkeley/CRATE, ``model/crate_ae``) to an export folder:

    python -m crate_mae.convert SRC DST [--heads K] [--lambd L] [--overwrite]

The key mapping and the loader are crate_mae.official; this module is only the command line, and the
package does not import it, so ``python -m`` runs it once, without runpy's "found in sys.modules" warning.
DST must be absent, empty or a previous export; --overwrite writes next to other files and replaces only a
previous export's own files. Errors: one line ``crate_mae.convert: error: ...``, exit status 2.
"""

from __future__ import annotations

from crate_core.convert import converter_main

from .official import load_official


def _arguments(parser) -> None:
    parser.add_argument("--lambd", type=float, default=None, help="ISTA threshold (official default 0.5)")


def main(argv: list[str] | None = None) -> int:
    return converter_main("crate_mae.convert", __doc__, load_official, argv, family="mae",
                          add_arguments=_arguments, options=lambda a: {"lambd": a.lambd})


if __name__ == "__main__":
    raise SystemExit(main())
