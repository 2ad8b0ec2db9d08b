"""Image decoding and augmentation throughput per CPU core, to size the data workers of a GPU run.

JPEGs are generated here (ImageNet-like: 500 x 375 px, quality 90, a smooth colour field plus grain, so
the files are photo-sized, ~50-100 KB, not noise-sized), then each pipeline runs over all of them in this
one process with one thread, interleaved round by round; the figure is images per CPU-second (process
time), i.e. per core:

    decode PIL              Image.open + convert("RGB")                   (what ImageFolder does)
    decode PIL draft        the same with JPEG DCT scaling to >= 256 px    (cheaper decode, for eval)
    decode torchvision      torchvision.io.decode_jpeg (libjpeg-turbo)    (a uint8 tensor)
    train                   PIL decode + RandomResizedCrop 224 + flip + normalise   (IN-1K recipes)
    train + RandAugment 2,9 the same + RandAugment(2, 9)                  (CRATE-alpha / ToST recipes)
    train + RandAugment 2,14 the same + RandAugment(2, 14)                (CIFAR fine-tuning recipes)
    eval                    PIL decode + resize 256 + centre crop 224 + normalise
    train (tensor path)     decode_jpeg + the train transform on the uint8 tensor

Then, for every ImageFolder (JPEG) recipe in recipes/, the images per second per GPU its header's GPU-hours
imply, and the workers (cores) per GPU that keep up with it at the measured rate of its pipeline. The draft
decode only gains when the JPEG is at least twice the requested 256 px (ImageNet's 500 x 375 is not).

    uv run benchmarks/image_decode.py                    # 64 JPEGs, median of 3 rounds
    uv run benchmarks/image_decode.py --images 256 --repeats 5
Writes benchmarks/reports/image_decode/{report.md, results.json, image_decode.png}.
"""

from __future__ import annotations

import argparse
import json
import math
import tempfile
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torchvision.io import decode_jpeg, read_file
from torchvision.transforms import v2

from benchmarks.harness import REPORTS, ROOT, device_name, interleaved, medians, pyplot, resolve_device


def make_jpegs(folder: Path, n: int, size=(500, 375), quality: int = 90, seed: int = 0) -> list[Path]:
    """``n`` photo-like JPEGs: a bicubic-upsampled 8 x 6 colour field plus Gaussian grain (sigma 6)."""
    rng = np.random.default_rng(seed)
    w, h = size
    paths = []
    for i in range(n):
        field = Image.fromarray(rng.integers(0, 255, (6, 8, 3), dtype=np.uint8)).resize((w, h), Image.BICUBIC)
        pixels = np.asarray(field, dtype=np.float32) + rng.normal(0, 6, (h, w, 3))
        path = folder / f"{i:05d}.jpg"
        Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(path, quality=quality)
        paths.append(path)
    return paths


def pipelines(image_size: int = 224) -> dict:
    """name -> (function of a path, recipe augmentation it stands for)."""
    from crate_vision.data.transforms import eval_transform, train_transform

    train = train_transform(image_size)
    ra9 = train_transform(image_size, randaugment=(2, 9))
    ra14 = train_transform(image_size, randaugment=(2, 14))
    evaluate = eval_transform(image_size)
    tensor_train = v2.Compose(
        [
            v2.RandomResizedCrop(image_size, antialias=True),
            v2.RandomHorizontalFlip(),
            v2.ToDtype(torch.float32, scale=True),
            v2.Normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
        ]
    )

    def pil(path):
        with Image.open(path) as im:
            return im.convert("RGB")

    def pil_draft(path):
        with Image.open(path) as im:
            im.draft("RGB", (round(image_size / 0.875),) * 2)
            return im.convert("RGB")

    return {
        "decode PIL": lambda p: pil(p),
        "decode PIL draft": lambda p: pil_draft(p),
        "decode torchvision": lambda p: decode_jpeg(read_file(str(p))),
        "train": lambda p: train(pil(p)),
        "train + RandAugment 2,9": lambda p: ra9(pil(p)),
        "train + RandAugment 2,14": lambda p: ra14(pil(p)),
        "eval": lambda p: evaluate(pil(p)),
        "train (tensor path)": lambda p: tensor_train(decode_jpeg(read_file(str(p)))),
    }


def recipe_pipeline(raw: dict) -> str | None:
    """Which measured pipeline a recipe's training data goes through (None: not an image recipe)."""
    if (
        raw["recipe"]["tool"] not in ("train_vision", "pretrain_mae")
        or raw["data"]["format"] != "imagefolder"
    ):
        return None  # CIFAR batches and Hugging Face copies hold decoded or small images: no JPEG decode
    if raw["recipe"]["tool"] == "pretrain_mae":
        return "eval"  # tools/pretrain_mae.py resizes and centre-crops
    ra = raw.get("tool", {}).get("randaugment")
    return {None: "train", (2, 9): "train + RandAugment 2,9", (2, 14): "train + RandAugment 2,14"}.get(
        tuple(ra) if ra else None, "train"
    )


def workers_table(rates: dict) -> list[dict]:
    """Per image recipe: images/s per GPU implied by its GPU-hours, and cores per GPU at the measured rate."""
    from crate_core.recipe import load_recipe

    rows = []
    for path in sorted((ROOT / "recipes").glob("*.toml")):
        r = load_recipe(path, check_presets=False)
        pipe = recipe_pipeline(r.raw)
        if pipe is None:
            continue
        samples = r.steps * r.flags["global_batch"]
        per_gpu = samples / (r.raw["recipe"]["gpu_hours"] * 3600)
        rows.append(
            {
                "recipe": r.name,
                "pipeline": pipe,
                "images_per_s_per_gpu": per_gpu,
                "cores_per_gpu": math.ceil(per_gpu / rates[pipe]),
            }
        )
    return rows


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", type=int, default=64)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--out", default=str(REPORTS / "image_decode"))
    args = p.parse_args(argv)
    if args.images < 1 or args.repeats < 1:
        raise SystemExit("image_decode: error: --images and --repeats must be >= 1")
    torch.set_num_threads(1)
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        paths = make_jpegs(Path(tmp), args.images)
        kib = sum(p.stat().st_size for p in paths) / len(paths) / 1024
        cases = {name: (lambda f=f: [f(p) for p in paths]) for name, f in pipelines(args.image_size).items()}
        times = interleaved(cases, warmup=1, repeats=args.repeats, device=resolve_device("cpu"))
    rates = {k: args.images / t for k, t in medians(times, "cpu").items()}
    wall = {k: args.images / t for k, t in medians(times, "wall").items()}
    table = workers_table(rates)
    result = {
        "cpu": device_name(resolve_device("cpu")),
        "images": args.images,
        "repeats": args.repeats,
        "mean_jpeg_kib": kib,
        "images_per_cpu_second": rates,
        "images_per_wall_second": wall,
        "recipes": table,
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(result, indent=2))
    lines = [
        "# Image decoding and augmentation throughput per core",
        "",
        f"`uv run benchmarks/image_decode.py --images {args.images} --repeats {args.repeats}` on {result['cpu']}, "
        f"one thread; {args.images} generated 500 x 375 JPEGs (quality 90, mean {kib:.0f} KiB); median of "
        f"{args.repeats} rounds. Images per CPU-second is the rate of one data-loader worker on one free core "
        "(wall-second rates are lower when other processes share the cores). ImageNet's JPEGs average ~110 KiB, "
        "so expect its decode to be somewhat slower than these.",
        "",
        "| pipeline | images / CPU-second | images / wall-second |",
        "|---|---:|---:|",
        *[f"| {k} | {rates[k]:.0f} | {wall[k]:.0f} |" for k in rates],
        "",
        "## Cores per GPU the recipes need",
        "",
        "Images per second per GPU implied by each recipe's GPU-hours (steps x global batch / GPU-seconds),",
        "divided by the per-core rate of its pipeline, rounded up: the `num_workers` per GPU (and free cores) "
        "that keep the GPU fed. A faster GPU than the header assumes needs proportionally more.",
        "",
        "| recipe | pipeline | images/s per GPU | cores per GPU |",
        "|---|---|---:|---:|",
        *[
            f"| {t['recipe']} | {t['pipeline']} | {t['images_per_s_per_gpu']:.0f} | {t['cores_per_gpu']} |"
            for t in table
        ],
        "",
    ]
    (out / "report.md").write_text("\n".join(lines))
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(8, 3.8))
    names = list(rates)
    ax.barh(names[::-1], [rates[n] for n in names[::-1]], color="#4472c4")
    ax.set_xlabel("images per CPU-second (one core)")
    ax.set_title(f"JPEG decode + augmentation, 500x375 -> {args.image_size} px")
    fig.tight_layout()
    fig.savefig(out / "image_decode.png", dpi=120)
    print("\n".join(lines))
    return result


if __name__ == "__main__":
    main()
