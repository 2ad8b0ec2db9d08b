"""Training-data throughput of the offline shapes set: the per-sample augmentation as plain tensor ops
(crate_vision TensorAugment: shift by reflect-pad + crop, horizontal flip, 90-degree rotations) against the
same augmentation built from torchvision transforms v2, side by side in one run, on cached samples
(the drawing is done once, before timing).

    uv run benchmarks/vision_data.py                 # batch 128, 32 px, median of 5 passes over 4096 images
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from crate_vision.data.datasets import build_dataset
from torch.utils.data import DataLoader
from torchvision.transforms import v2


def v2_pipeline(image_size: int, pad: int) -> v2.Compose:
    """The same augmentation in transforms v2 (rot90 through a Lambda: v2 has no exact 90-degree op)."""
    rot = v2.Lambda(lambda x: torch.rot90(x, int(torch.randint(4, ())), dims=(-2, -1)))
    return v2.Compose([v2.RandomCrop(image_size, padding=pad, padding_mode="reflect"), v2.RandomHorizontalFlip(), rot])


def ms_per_batch(ds, batch: int, passes: int) -> float:
    loader = DataLoader(ds, batch_size=batch, shuffle=True, drop_last=True)
    times = []
    for _ in range(passes):
        t = time.perf_counter()
        n = sum(1 for _ in loader)
        times.append((time.perf_counter() - t) / n * 1e3)
    return statistics.median(times)


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", type=int, default=4096)
    p.add_argument("--image-size", type=int, default=32)
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--passes", type=int, default=5)
    args = p.parse_args(argv)

    ds, _ = build_dataset("shapes", "train", args.image_size, augment=True, size=args.images)
    ds._cache = {}  # as in training: draw once, reuse
    for i in range(len(ds)):
        ds[i]
    ours = ds.transform
    baseline = v2_pipeline(args.image_size, ours.pad)
    out = {}
    for name, tf in (("TensorAugment", ours), ("transforms v2", baseline)):
        ds.transform = tf
        out[name] = ms_per_batch(ds, args.batch, args.passes)
    ds.transform = ours
    print(f"shapes {args.image_size} px, batch {args.batch}, torch threads {torch.get_num_threads()}")
    for name, ms in out.items():
        print(f"  {name:14s} {ms:6.2f} ms/batch  {args.batch / ms * 1e3:8,.0f} img/s")
    print(f"  speed-up of TensorAugment: {out['transforms v2'] / out['TensorAugment']:.2f}x")
    return out


if __name__ == "__main__":
    main()
