"""Training-data throughput of the offline shapes set, three ways side by side in one run, on cached samples
(the drawing is done once, before timing); the augmentation is the same in all three (shift by reflect-pad +
crop, horizontal flip, 90-degree rotations):

    batched        what training uses: collate clean samples, then one batched TensorAugment on the batch
                   (crate_vision AugmentCollate: a gather and a few where's, each image its own draw)
    per sample     the same TensorAugment called on each sample in the Dataset
    transforms v2  the same augmentation built from torchvision transforms v2, per sample

    uv run benchmarks/vision_data.py                 # batch 128, 32 px, median of 5 passes over 4096 images
"""

from __future__ import annotations

import argparse

import torch
from crate_vision.data.datasets import build_dataset
from crate_vision.data.transforms import AugmentCollate
from torch.utils.data import DataLoader
from torchvision.transforms import v2

from benchmarks.harness import resolve_device, timed


def v2_pipeline(image_size: int, pad: int) -> v2.Compose:
    """The same augmentation in transforms v2 (rot90 through a Lambda: v2 has no exact 90-degree op)."""
    rot = v2.Lambda(lambda x: torch.rot90(x, int(torch.randint(4, ())), dims=(-2, -1)))
    return v2.Compose([v2.RandomCrop(image_size, padding=pad, padding_mode="reflect"), v2.RandomHorizontalFlip(), rot])


def ms_per_batch(ds, batch: int, passes: int, collate=None) -> float:
    """Median over ``passes`` full passes of the loader, per batch."""
    loader = DataLoader(ds, batch_size=batch, shuffle=True, drop_last=True, collate_fn=collate)
    return timed(lambda: sum(1 for _ in loader), 0, passes, resolve_device("cpu")) / len(loader) * 1e3


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
    augment = ds.transform
    runs = {
        "batched": (None, AugmentCollate(augment)),
        "per sample": (augment, None),
        "transforms v2": (v2_pipeline(args.image_size, augment.pad), None),
        "no augmentation": (None, None),
    }
    out = {}
    for name, (per_sample, collate) in runs.items():
        ds.transform = per_sample
        out[name] = ms_per_batch(ds, args.batch, args.passes, collate)
    ds.transform = augment
    print(f"shapes {args.image_size} px, batch {args.batch}, torch threads {torch.get_num_threads()}")
    for name, ms in out.items():
        print(f"  {name:16s} {ms:6.2f} ms/batch  {args.batch / ms * 1e3:8,.0f} img/s")
    for name in ("per sample", "transforms v2"):
        print(f"  batched is {out[name] / out['batched']:.2f}x faster than {name}")
    return out


if __name__ == "__main__":
    main()
