#!/usr/bin/env python
"""Self-supervised pretraining of a vision backbone with DINO or SimDINO on the shared trainer.

Default: SimDINO on crate-mini-shapes (128 wide, 4 layers, patch 8) over the offline shapes set (32 px,
2 global crops of 32 px and 4 local crops of 16 px), a CPU-sized run. Every --eval-every steps and at the end it
logs the teacher's weighted k-NN top-1 on held-out shapes; it writes OUT/final, the teacher backbone as a
plain classifier export with num_classes 0 (crate_core.from_pretrained, tools/eval_knn.py, tools/segment.py
and tools/train_vision.py --finetune read it), and OUT/metrics.json.

    uv run tools/pretrain_ssl.py                                        # SimDINO, offline
    uv run tools/pretrain_ssl.py --method dino --model vit-mini-shapes  # DINO on the ViT baseline
    uv run tools/eval_knn.py runs/pretrain_ssl/final                    # k-NN of the export
    uv run tools/pretrain_ssl.py --set step_size=0.2 --simdino-eps 0.05         # model field, SimDINO eps
    deepspeed --num_gpus 8 tools/pretrain_ssl.py --recipe recipes/ssl-simdino-vit-b16-in1k.toml
"""

from __future__ import annotations

import argparse
import json

import crate_core
import crate_vision  # noqa: F401  registers the vision presets
import torch
from crate_core.cli import add_debug_arg, add_set_arg, parse_sets
from crate_core.train import add_train_args, train_config_from_args

# SSLConfig fields with flags
AUGMENTATION = ("global_scale", "local_scale", "color_jitter", "grayscale_p", "blur_sigma", "quarter_turns")
# model fields the self-supervised run decides
FIXED = {"num_classes": "the self-supervised run (a features-only backbone, num_classes 0)"}


def build_parser() -> argparse.ArgumentParser:
    p = add_debug_arg(argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter))
    add_train_args(
        p,
        out_dir="runs/pretrain_ssl",
        steps=300,
        micro_batch=64,
        lr=1e-3,
        min_lr=1e-5,
        warmup_steps=30,
        weight_decay=0.04,
        grad_clip=3.0,
        eval_every=100,
        log_every=20,
        wandb="offline",
        zero_stage=0,
        # --crops image draws the crops in these worker processes (one thread each: torchvision's ops are slow
        # threaded)
        num_workers=2,
    )
    g = p.add_argument_group("self-supervised")
    g.add_argument("--method", choices=("dino", "simdino"), default="simdino")
    g.add_argument("--model", default="crate-mini-shapes", help="a registered vision preset (task classify)")
    add_set_arg(g)
    g.add_argument(
        "--data", default="shapes", help="shapes | mnist (offline) | cifar10:PATH | cifar100:PATH | imagefolder:PATH | hf:PATH"
    )
    g.add_argument("--image-size", type=int, default=None, help="global crop size (--set image_size); default: the preset's")
    g.add_argument("--train-size", type=int, default=4000, help="shapes only: training images")
    g.add_argument("--knn-train-size", type=int, default=1000, help="shapes: labelled images of the k-NN evaluation")
    g.add_argument("--knn-eval-size", type=int, default=500, help="shapes: held-out images of the k-NN evaluation")
    g.add_argument("--crops", choices=("auto", "batch", "image"), default="auto",
                   help="draw the crops per batch in the training process (kornia) or per image in the data loader "
                        "(torchvision); auto: batch on the fixed-size offline sets (shapes, mnist), else image")
    g.add_argument("--local-crops", type=int, default=4, help="local crops per image (DINO / SimDINO ViT-B: 10)")
    # the augmentation's defaults are SSLConfig's (DINO's values), filled in by main
    g.add_argument("--global-scale", type=float, nargs=2, default=None, metavar=("LO", "HI"),
                   help="area range of the global crops (default DINO's: 0.4 1)")
    g.add_argument("--local-scale", type=float, nargs=2, default=None, metavar=("LO", "HI"),
                   help="area range of the local crops (default DINO's: 0.05 0.4)")
    g.add_argument("--color-jitter", type=float, nargs=4, default=None, metavar=("B", "C", "S", "H"),
                   help="colour jitter brightness, contrast, saturation, hue, applied with p 0.8 "
                        "(default DINO's: 0.4 0.4 0.2 0.1)")
    g.add_argument("--grayscale-p", type=float, default=None, help="probability of a grey crop (default DINO's: 0.2)")
    g.add_argument("--blur-sigma", type=float, nargs=2, default=None, metavar=("LO", "HI"),
                   help="Gaussian blur sigma range in pixels, every crop (default DINO's 0.1 2 px at 224 px, "
                        "scaled to the crop: 0.014 0.29 at 32 px)")
    g.add_argument("--quarter-turns", action="store_true", default=None,
                   help="turn each view by a random multiple of 90 degrees (not DINO's; for orientation-free classes)")
    g.add_argument("--hidden-dim", type=int, default=512, help="head MLP width (official 2048)")
    g.add_argument("--bottleneck-dim", type=int, default=128, help="head output / prototype input (official 256)")
    g.add_argument("--momentum-teacher", type=float, default=0.996, help="EMA momentum at step 0 (cosine to 1)")
    s = p.add_argument_group("SimDINO (MCRLoss arguments)")
    s.add_argument("--simdino-eps", type=float, default=0.5, help="MCRLoss eps (official --eps; --eps is AdamW's)")
    s.add_argument("--coeff", type=float, default=1.0)
    s.add_argument("--expa-type", type=int, choices=(0, 1), default=1)
    s.add_argument("--reduce-cov", type=int, choices=(0, 1), default=0)
    d = p.add_argument_group("DINO")
    d.add_argument("--out-dim", type=int, default=1024, help="prototypes (official 65536)")
    d.add_argument("--norm-last-layer", action=argparse.BooleanOptionalAction, default=True)
    d.add_argument("--teacher-temp", type=float, default=0.07)
    d.add_argument("--warmup-teacher-temp", type=float, default=0.04)
    d.add_argument("--warmup-teacher-temp-steps", type=int, default=0)
    d.add_argument("--freeze-last-layer-steps", type=int, default=0)
    return p


def main(argv: list[str] | None = None) -> dict:
    from crate_core.recipe_cli import parse_with_recipe
    from crate_vision.data.datasets import build_dataset
    from crate_vision.ssl import SSLConfig
    from crate_vision.ssl.data import raw_images
    from crate_vision.ssl.train import KNNEval, pretrain

    args = parse_with_recipe(build_parser(), argv, tool="pretrain_ssl")  # --recipe PATH: its values become defaults
    entry = crate_core.registry.resolve_for_task(args.model, "classify")  # a wrong model fails before any process group
    sets = parse_sets(args.set, type(entry.config), flags={"image_size": args.image_size}, fixed=FIXED)
    torch.manual_seed(args.seed)  # the initialisation is part of the run
    backbone = crate_core.create(args.model, **sets, num_classes=0)
    size = backbone.config.image_size
    train_images, mean, std = raw_images(args.data, size, args.train_size, seed=args.seed)
    knn = None
    if args.data == "shapes" and args.eval_every:  # the labelled bank and held-out images of tools/eval_knn.py
        knn = KNNEval(
            build_dataset("shapes", "val", size, size=args.knn_train_size, seed=1)[0],
            build_dataset("shapes", "test", size, size=args.knn_eval_size, seed=1)[0],
        )
    elif args.data == "mnist" and args.eval_every:  # the training digits (with labels) as the bank, as DINO
        knn = KNNEval(build_dataset("mnist", "train", size)[0], build_dataset("mnist", "test", size)[0])
    crops = args.crops if args.crops != "auto" else ("batch" if args.data in ("shapes", "mnist") else "image")
    cfg = train_config_from_args(
        args, extra={"model": args.model, "data": args.data, "method": args.method, "crops": crops, **sets}
    )
    given = {name: getattr(args, name) for name in AUGMENTATION if getattr(args, name) is not None}
    augmentation = {name: tuple(v) if isinstance(v, list) else v for name, v in given.items()}  # nargs gives lists
    ssl_cfg = SSLConfig(
        method=args.method, local_crops=args.local_crops, **augmentation,
        hidden_dim=args.hidden_dim, bottleneck_dim=args.bottleneck_dim,
        momentum_teacher=args.momentum_teacher, total_steps=cfg.steps, eps=args.simdino_eps, coeff=args.coeff,
        expa_type=args.expa_type, reduce_cov=args.reduce_cov, out_dim=args.out_dim, norm_last_layer=args.norm_last_layer,
        teacher_temp=args.teacher_temp, warmup_teacher_temp=args.warmup_teacher_temp,
        warmup_teacher_temp_steps=args.warmup_teacher_temp_steps, freeze_last_layer_steps=args.freeze_last_layer_steps,
    )
    result = pretrain(
        backbone, ssl_cfg, cfg, train_images, mean, std, knn_eval=knn,
        export_extra={"ssl": {"method": args.method, "model": args.model, "data": args.data}},
        crops=crops,
    )
    summary = {
        "method": args.method,
        "model": args.model,
        "steps": result["steps"],
        "train_time_s": round(result["train_time_s"], 1),
        "loss": result["loss"],
        "knn_top1": result.get("eval/knn_top1"),
        "export": result["export"],
    }
    print(json.dumps(summary))
    return result


if __name__ == "__main__":
    from crate_core.cli import run

    run(main, name="pretrain_ssl")
