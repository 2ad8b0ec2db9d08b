"""Convert an official CRATE / CRATE-alpha checkpoint to safetensors + config.json:

    python -m crate_vision.convert SRC OUT [--heads K] [--variant auto|crate|alpha]

Reads the official training checkpoint ({"state_dict": ...} with "module." keys), a bare state_dict or
CRATE-alpha torch weights; infers width, depth, patch, image size and classes from the shapes; the
number of heads comes from the preset of the same width and depth, else from --heads.
"""

from __future__ import annotations

import argparse

from .official import VARIANTS, load_official


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("src", help="official checkpoint (.pth/.pt/.safetensors)")
    parser.add_argument("out", help="output directory (model.safetensors + config.json)")
    parser.add_argument("--heads", type=int, default=None, help="number of heads (default: from the preset)")
    parser.add_argument("--variant", choices=VARIANTS, default="auto")
    parser.add_argument("--in-channels", type=int, default=3)
    args = parser.parse_args(argv)
    import crate_core

    model = load_official(args.src, heads=args.heads, variant=args.variant, in_channels=args.in_channels)
    crate_core.save_pretrained(model, args.out, extra={"converted_from": str(args.src)})
    c = model.config
    print(
        f"wrote {args.out}: {c.dim} wide, {c.depth} layers, {c.heads} heads, patch {c.patch_size}, "
        f"{c.image_size} px, {c.num_classes} classes, {model.num_params() / 1e6:.2f}M parameters"
    )


if __name__ == "__main__":
    main()
