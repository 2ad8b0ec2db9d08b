"""Multi-crop cost of self-supervised training: per image (MultiCrop, torchvision, as a data-loader worker
draws it) against per batch (BatchMultiCrop, kornia, in the training process), side by side in one run.

Both draw DINO's views (2 global crops and ``--local-crops`` local ones, jitter, grey, blur, solarisation,
normalisation) for the same batch of offline shapes; the cases are interleaved round by round and the figure
is the median time per batch (wall and CPU), with the ratio. On a GPU (``--device cuda``) the batched crops
run on the device and the per-image ones on one CPU core, as in a run.

    uv run benchmarks/multicrop_speed.py                          # 64 images of 32 px, 2+0 and 2+4 crops, 1 thread
    uv run benchmarks/multicrop_speed.py --batch 256 --image-size 224 --patch 16 --device cuda
Writes benchmarks/reports/multicrop_speed/{report.md, results.json} (--out to change).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from benchmarks.harness import REPORTS, device_name, interleaved, medians, resolve_device


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--image-size", type=int, default=32)
    p.add_argument("--patch", type=int, default=8, help="the local crop is 96/224 of the image in whole patches")
    p.add_argument("--local-crops", type=int, nargs="+", default=[0, 4])
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--device", default="cpu", help="where the batched crops run (cpu, cuda, auto)")
    p.add_argument("--out", type=Path, default=REPORTS / "multicrop_speed")
    args = p.parse_args(argv)
    from crate_vision.data.shapes import ShapesDataset
    from crate_vision.ssl.multicrop import BatchMultiCrop, MultiCrop, crop_sizes

    torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    shapes = ShapesDataset(args.batch, args.image_size, normalize=False, cache=True)
    images = [shapes[i][0] for i in range(args.batch)]
    batch = torch.stack(images).to(device)
    g, l = crop_sizes(args.image_size, args.patch)
    rows = {}
    for local in args.local_crops:
        per_image = MultiCrop(g, l, local, (0.5,) * 3, (0.5,) * 3)
        per_batch = BatchMultiCrop(g, l, local, (0.5,) * 3, (0.5,) * 3)
        cases = {"per image": lambda mc=per_image: [mc(x) for x in images], "per batch": lambda mc=per_batch: mc(batch)}
        times = interleaved(cases, warmup=1, repeats=args.repeats, device=device)
        wall, cpu = medians(times), medians(times, clock="cpu")
        rows[local] = {"wall_s": wall, "cpu_s": cpu, "ratio": wall["per image"] / wall["per batch"]}
    lines = [
        f"{device_name(device)}, {args.threads} thread(s), {args.batch} shapes of {args.image_size} px, "
        f"global {g} px, local {l} px; median of {args.repeats}",
        "",
        "| crops | per image (ms / batch, wall / CPU) | per batch (ms / batch, wall / CPU) | per image / per batch |",
        "|---|---|---|---|",
    ]
    for local, r in rows.items():
        w, c = r["wall_s"], r["cpu_s"]
        lines.append(f"| 2 + {local} | {w['per image'] * 1e3:.1f} / {c['per image'] * 1e3:.1f} | "
                     f"{w['per batch'] * 1e3:.1f} / {c['per batch'] * 1e3:.1f} | {r['ratio']:.2f}x |")
    print("\n".join(lines))
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "report.md").write_text("# Multi-crop cost: per image vs per batch\n\n" + "\n".join(lines) + "\n")
    (args.out / "results.json").write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()},
                                                       "rows": rows}, indent=2))
    return rows


if __name__ == "__main__":
    main()
