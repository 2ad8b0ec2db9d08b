"""Convert any released CRATE-family checkpoint into an export folder (model.safetensors, config.json, README.md):

    python -m crate_core.convert SRC DST [--family auto] [--heads K] [--overwrite]

The layout (CRATE, CRATE demo/21k, CRATE-alpha, CRATE-MAE, CRATE-LM square/overcomplete) is read off
the keys (crate_core.official). DST must be absent, empty or a previous export; a folder holding
other files needs --overwrite, which writes the export next to them and deletes nothing else.
Errors print one line ``crate_core.convert: error: ...`` and exit with status 2 (--debug shows the traceback).
"""

from __future__ import annotations

import argparse
from collections.abc import Callable


def export(model, dst, src, layout: str, overwrite: bool = False):
    """Write ``model`` to ``dst`` with a model card naming the source file and layout."""
    from .hub import save_pretrained

    return save_pretrained(
        model, dst, extra={"converted_from": str(src), "layout": layout}, overwrite=overwrite, model_card=True
    )


def converter_main(
    prog: str,
    description: str,
    load: Callable,
    argv: list[str] | None = None,
    family: str = "auto",
    add_arguments: Callable[[argparse.ArgumentParser], None] | None = None,
    options: Callable[[argparse.Namespace], dict] | None = None,
) -> int:
    """The command line every converter shares: SRC DST [--heads K] [--overwrite] [--debug] [family options].
    Errors go through crate_core.cli.run: one line ``PROG: error: ...`` and SystemExit(2)."""
    from .cli import add_debug_arg, run

    parser = add_debug_arg(argparse.ArgumentParser(
        prog=f"python -m {prog}", description=description, formatter_class=argparse.RawDescriptionHelpFormatter
    ))
    parser.add_argument("src", help="official checkpoint (.pth / .pt / .bin / .safetensors)")
    parser.add_argument("dst", help="output folder (model.safetensors + config.json + README.md)")
    parser.add_argument("--heads", type=int, default=None, help="number of heads when no preset or metadata gives it")
    parser.add_argument("--overwrite", action="store_true", help="write into a folder that holds other files")
    if add_arguments is not None:
        add_arguments(parser)

    def convert(args_list: list[str]) -> None:
        from .official import read_checkpoint

        args = parser.parse_args(args_list)
        ckpt = read_checkpoint(args.src)
        kwargs = {"heads": args.heads, **(options(args) if options else {})}
        model = load(ckpt, **{k: v for k, v in kwargs.items() if v is not None})
        layout = getattr(model, "_official_layout", family)
        out = export(model, args.dst, args.src, layout, overwrite=args.overwrite)
        n = sum(p.numel() for p in model.parameters())
        print(f"wrote {out}: {type(model).__name__} ({layout}), {n / 1e6:.2f}M parameters")

    run(convert, argv, name=prog)
    return 0


def main(argv: list[str] | None = None) -> int:
    from .official import detect_layout

    def load(ckpt, family="auto", **kw):
        layout, ckpt = detect_layout(ckpt, family)
        model = layout.load(ckpt, **kw)
        model._official_layout = layout.name
        return model

    return converter_main(
        "crate_core.convert",
        __doc__,
        load,
        argv,
        add_arguments=lambda p: p.add_argument(
            "--family", default="auto", help="auto (default), a family (vision, mae, text) or a layout name"
        ),
        options=lambda a: {"family": a.family},
    )


if __name__ == "__main__":
    raise SystemExit(main())
