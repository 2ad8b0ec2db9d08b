"""Emergent segmentation of a CRATE classifier: cls-attention maps, PCA of patch features, mIoU.

Overlays (PNG per image: each head's cls attention at --layer, their mean, PCA of last-layer patches):
    uv run python tools/segment.py overlay --model-dir runs/vision/final --images a.jpg b.png \
        --skimage astronaut chelsea coffee --out-dir runs/segment
The official CRATE demo checkpoint (base, 8x8 patches, ImageNet-21K head) directly, or converted:
    uv run python tools/segment.py overlay --official crate-demo.pth --skimage astronaut chelsea --layer 10
A released CBT checkpoint (QishuaiWen/CBSA), whose maps are A^T A of each head's contraction weights A
(representatives x tokens), the maps the released code draws:
    uv run python tools/segment.py overlay --official cbt_small_best.pth.tar --skimage astronaut --layer 10
Measured version on the shapes set (thresholded cls attention vs the true masks):
    uv run python tools/segment.py miou --model-dir runs/vision/final --model-dir runs/vit/final
Train a tiny CRATE and the same-size timm ViT the same way (same data, steps, seed), then compare:
    uv run python tools/segment.py compare --steps 1500 --out-dir runs/segment
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import crate_core
import crate_vision  # noqa: F401
import numpy as np
import torch
import torch.nn.functional as F
from crate_core.cli import add_debug_arg
from crate_vision.data import ShapesDataset
from crate_vision.segment import pca_rgb, save_overlay, shapes_miou
from PIL import Image

SKIMAGE_PHOTOS = ("astronaut", "chelsea", "coffee", "rocket", "cat", "hubble_deep_field")


def load_photo(name_or_path: str) -> tuple[str, np.ndarray]:
    """(name, uint8 HxWx3) from an image file or a scikit-image sample photo name (shipped offline)."""
    path = Path(name_or_path)
    if path.suffix:
        if not path.is_file():
            raise FileNotFoundError(f"image {name_or_path!r} does not exist")
        return path.stem, np.asarray(Image.open(path).convert("RGB"))
    import skimage.data

    if not hasattr(skimage.data, name_or_path):
        raise ValueError(f"unknown scikit-image sample {name_or_path!r}; try one of {SKIMAGE_PHOTOS}")
    img = getattr(skimage.data, name_or_path)()
    if img.ndim == 2:
        img = np.stack([img] * 3, -1)
    return name_or_path, np.ascontiguousarray(img[..., :3])


def prepare(image: np.ndarray, size: int, mean, std) -> tuple[torch.Tensor, np.ndarray]:
    """Center-crop to a square, resize to ``size``; return (normalised (1, 3, S, S), shown uint8 image)."""
    h, w = image.shape[:2]
    s = min(h, w)
    crop = image[(h - s) // 2 : (h - s) // 2 + s, (w - s) // 2 : (w - s) // 2 + s]
    shown = np.asarray(Image.fromarray(crop).resize((size, size), Image.BICUBIC))
    x = torch.from_numpy(np.array(shown)).permute(2, 0, 1).float()[None] / 255
    x = (x - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    return x, shown


def load_model(args):
    """The model to draw: an export folder (--model-dir), or an official checkpoint file (--official),
    e.g. the CRATE demo checkpoint (crate-demo.pth: base, patch 8, 21,842 classes), converted in memory."""
    if bool(args.model_dir) == bool(args.official):
        raise ValueError("give exactly one of --model-dir (an export folder) or --official (a checkpoint file)")
    if args.official:
        return crate_core.load_official(args.official, family="vision", heads=args.heads).eval()
    return crate_core.from_pretrained(args.model_dir[0], task="classify").eval()


def overlay(args) -> None:
    model = load_model(args)
    size = args.image_size or model.config.image_size
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    inputs = [load_photo(p) for p in args.images] + [load_photo(n) for n in args.skimage]
    if args.shapes:
        ds = ShapesDataset(args.shapes, model.config.image_size, "test")
        inputs += [(f"shapes{i}", ds.image(i)) for i in range(args.shapes)]
    if not inputs:
        raise SystemExit("nothing to draw: give --images, --skimage or --shapes")
    for name, image in inputs:
        mean, std = ((0.5,) * 3, (0.5,) * 3) if name.startswith("shapes") else (args.mean, args.std)
        x, shown = prepare(image, size, mean, std)
        maps = model.cls_attention(x, layer=args.layer)[0]
        maps = F.interpolate(maps[None], size=(size, size), mode="bilinear", align_corners=False)[0].numpy()
        pca = pca_rgb(model, x, model.config.patch_size)[0]
        path = out / f"{name}_layer{args.layer}.png"
        save_overlay(path, shown, maps, pca, title=name)
        print(f"wrote {path}")


def miou(args) -> dict:
    results = {}
    for d in args.model_dir:
        model = crate_core.from_pretrained(d, task="classify").eval()
        classes = model.config.num_classes  # a features-only (self-supervised) export: the default 6 classes
        ds = ShapesDataset(args.n, model.config.image_size, "test", num_classes=classes if classes >= 2 else 6)
        results[d] = shapes_miou(model, ds, n=args.n, layer=args.layer, mass=args.mass)
        r = results[d]
        print(f"{d}: mIoU {r['miou']:.3f} (2-class {r['miou_2class']:.3f}; best head {r['best_head']}: "
              f"{r['best_head_miou']:.3f}) on {r['n']} test images, layer {args.layer}, mass {args.mass}")
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rows = [{"model": crate_core.hub.read_config(d)["model_class"].split(":")[-1], "model_dir": d,
             **{k: v for k, v in r.items() if isinstance(v, (int, float, str))}} for d, r in results.items()]
    (out / "results.json").write_text(json.dumps(rows, indent=2))
    return results


def compare(args) -> dict:
    """Train CRATE and the same-size ViT on the same shapes data and steps; report accuracy and mIoU."""
    from crate_core.train import TrainConfig
    from crate_vision.data.datasets import build_dataset
    from crate_vision.training import build_model, train_classifier

    out = Path(args.out_dir)
    rows = {}
    for name in (args.crate, args.vit):
        cfg = TrainConfig(out_dir=str(out / name), steps=args.steps, micro_batch=args.micro_batch, lr=args.lr,
                          warmup_steps=args.warmup_steps, weight_decay=0.05, eval_every=0, eval_batches=4,
                          log_every=max(1, args.steps // 10), zero_stage=0, wandb=args.wandb, seed=args.seed,
                          progress="plain")
        size = crate_core.get_config(name).image_size
        _, spec = build_dataset("shapes", "val", size)
        model = build_model(name, spec)
        res = train_classifier(cfg, model, "shapes", size, train_size=args.train_size)
        trainer = res["trainer"]
        trainer.export(out / name / "final")
        test = ShapesDataset(args.n, size, "test")
        seg = shapes_miou(trainer.model.cpu().eval(), test, n=args.n, layer=args.layer, mass=args.mass)
        rows[name] = {"top1": res["test"]["top1"], "train_time_s": res["fit"]["time_s"],
                      "params": sum(p.numel() for p in trainer.model.parameters()), **seg}
        for i in range(args.overlays):
            x = test.sample(i)["image"][None]
            maps = trainer.model.cls_attention(x, layer=args.layer)[0]
            maps = F.interpolate(maps[None], size=(size, size), mode="bilinear", align_corners=False)[0].numpy()
            pca = pca_rgb(trainer.model, x, trainer.model.config.patch_size)[0]
            save_overlay(out / f"{name}_shapes{i}.png", test.image(i), maps, pca, title=f"{name} #{i}")
    lines = [
        f"# Emergent segmentation on the shapes test set ({args.n} images, layer {args.layer}, mass {args.mass})",
        "",
        f"Both trained with tools/segment.py compare: {args.steps} steps, batch {args.micro_batch}, lr {args.lr}, seed {args.seed}.",
        "",
        "| model | params | test top-1 | mIoU (object) | mIoU (2-class) | best head mIoU | train time (s) |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, r in rows.items():
        lines.append(f"| {name} | {r['params'] / 1e6:.3f}M | {r['top1']:.3f} | {r['miou']:.3f} | {r['miou_2class']:.3f} "
                     f"| {r['best_head_miou']:.3f} (head {r['best_head']}) | {r['train_time_s']:.0f} |")
    (out / "report.md").write_text("\n".join(lines) + "\n")
    (out / "results.json").write_text(json.dumps(rows, indent=2))
    print("\n".join(lines))
    return rows


def main(argv=None):
    p = add_debug_arg(argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter))
    sub = p.add_subparsers(dest="cmd", required=True)
    o = sub.add_parser("overlay", help="PNG overlays of cls attention and PCA for given images")
    o.add_argument("--model-dir", action="append", default=[], help="exported model directory")
    o.add_argument("--official", default=None, help="official checkpoint file (CRATE, demo/21k, CRATE-alpha, CBT)")
    o.add_argument("--heads", type=int, default=None, help="heads of an --official file without a preset")
    o.add_argument("--images", nargs="*", default=[], help="image files")
    o.add_argument("--skimage", nargs="*", default=[], help=f"scikit-image sample photos, e.g. {' '.join(SKIMAGE_PHOTOS[:3])}")
    o.add_argument("--shapes", type=int, default=0, help="also draw this many shapes test images")
    o.add_argument("--image-size", type=int, default=None, help="resize photos to this (default: the model's)")
    o.add_argument("--mean", type=float, nargs=3, default=(0.485, 0.456, 0.406))
    o.add_argument("--std", type=float, nargs=3, default=(0.229, 0.224, 0.225))
    m = sub.add_parser("miou", help="mIoU of thresholded cls attention on the shapes test set")
    m.add_argument("--model-dir", action="append", required=True)
    c = sub.add_parser("compare", help="train CRATE and ViT the same way, then mIoU side by side")
    c.add_argument("--crate", default="crate-mini-shapes-p4")
    c.add_argument("--vit", default="vit-mini-shapes-p4")
    c.add_argument("--steps", type=int, default=1500)
    c.add_argument("--micro-batch", type=int, default=64)
    c.add_argument("--lr", type=float, default=2e-3)
    c.add_argument("--warmup-steps", type=int, default=100)
    c.add_argument("--train-size", type=int, default=None)
    c.add_argument("--seed", type=int, default=1337)
    c.add_argument("--wandb", default="disabled", choices=["offline", "online", "disabled"])
    c.add_argument("--overlays", type=int, default=4, help="PNG overlays of this many test images per model")
    for q in (o, m, c):
        add_debug_arg(q)
        q.add_argument("--layer", type=int, default=-1, help="layer whose cls attention is used (default last)")
        q.add_argument("--out-dir", default="runs/segment")
    for q in (m, c):
        q.add_argument("--n", type=int, default=500, help="test images scored")
        q.add_argument("--mass", type=float, default=0.6, help="fraction of attention kept in the mask")
    args = p.parse_args(argv)
    return {"overlay": overlay, "miou": miou, "compare": compare}[args.cmd](args)


if __name__ == "__main__":
    from crate_core.cli import run

    run(main, name="segment")
