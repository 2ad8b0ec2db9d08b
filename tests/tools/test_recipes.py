"""Recipes never rot: every recipes/*.toml is validated by crate_core.recipe and run for two optimizer steps
on the CPU through its own tool's main() and the same --recipe reader a user's launch goes through.

The documented smoke override (what makes a GPU-week recipe a CPU second):
    --model <[model].smoke_preset>        a tiny preset of the same family (same block, ISTA variant, head)
    the recipe's [smoke] table             image size 32 / context 32, 2 samples per process, global batch 4, fp32
    --steps 2 --warmup-steps 1            two optimizer steps
    --data <generated>                     a few generated samples in the recipe's own data format: an ImageFolder
                                           of JPEGs, CIFAR python batches, a Hugging Face save_to_disk copy, or
                                           train.bin / val.bin token files
    --finetune <exported tiny model>       for fine-tuning recipes (their real start is a run or an official .pth)
Everything else (optimizer, betas, schedule shape, ZeRO stage, augmentation, mixing, label smoothing) is the
recipe's own. Tools run in this process (one process per recipe would cost an interpreter + imports each).
"""

from __future__ import annotations

import argparse
import math
import pickle
import warnings
from pathlib import Path

import crate_core
import numpy as np
import pytest
import torch
from crate_core.recipe import DATA_FORMATS, RecipeError, RecipeWarning, load_recipe
from crate_core.recipe_cli import check_batch, parse_with_recipe

ROOT = Path(__file__).resolve().parents[2]
RECIPES = sorted((ROOT / "recipes").glob("*.toml"))


@pytest.fixture(autouse=True)
def _quiet(monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "disabled")
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    torch.set_num_threads(1)


# ---- the reader -------------------------------------------------------------------------------
def test_every_recipe_is_valid_and_complete():
    """All tables a recipe promises are there; the batch and schedule arithmetic holds."""
    names = set()
    assert len(RECIPES) >= 18
    for path in RECIPES:
        r = load_recipe(path)
        assert r.name == path.stem and r.name not in names
        names.add(r.name)
        for table in ("recipe", "model", "data", "train", "batch", "eval", "smoke"):
            assert table in r.raw, (path.name, table)
        t, b = r.raw["train"], r.raw["batch"]
        assert t["global_batch"] == t["micro_batch"] * b["accumulation"] * b["reference_world"]
        s, d = r.raw.get("schedule", {}), r.raw["data"]
        assert ("steps" in t) != ("epochs" in s)
        if "epochs" in s:
            assert r.steps == math.ceil(s["epochs"] * d["train_samples"] / t["global_batch"])
        else:
            assert r.steps == t["steps"]
        assert r.get("model", "smoke_preset") in crate_core.list_models()
        assert r.get("recipe", "gpu_hours") > 0 and r.get("recipe", "source")
    # the experiments the issue lists
    for name in (
        "crate-t16-in1k",
        "crate-s16-in1k",
        "crate-b16-in1k",
        "crate-l16-in1k",
        "crate-s16-cifar10-ft",
        "crate-s16-cifar100-scratch",
        "crate-alpha-b16-in21k",
        "crate-alpha-b16-in1k-ft",
        "crate-alpha-l14-in21k",
        "crate-alpha-l14-in1k-ft",
        "crate-mae-b16-in1k",
        "crate-gpt-base-owt",
        "crate-lm-base-pile",
        "tost-s16-in1k",
    ):
        assert name in names


def test_imagenet_recipe_matches_the_official_readme():
    r = load_recipe(ROOT / "recipes" / "crate-b16-in1k.toml")
    f = r.flags
    assert (f["optimizer"], f["lr"], f["weight_decay"], f["global_batch"]) == ("lion", 2e-4, 0.05, 512)
    assert f["steps"] == math.ceil(200 * 1281167 / 512) and f["warmup_steps"] == math.ceil(20 * 1281167 / 512)
    assert f["data"] == "imagefolder:data/imagenet" and f["model"] == "crate-base-patch16-224"
    gpt = load_recipe(ROOT / "recipes" / "crate-gpt-base-owt.toml")
    tokens_per_step = gpt.flags["global_batch"] * gpt.raw["data"]["block_size"]
    assert tokens_per_step == 491520 and gpt.steps == 600_000


def _write(tmp_path: Path, text: str, base: str = "crate-b16-in1k.toml") -> Path:
    """A copy of a real recipe with one edit ``"old => new"`` (the first occurrence of old)."""
    src = (ROOT / "recipes" / base).read_text()
    old, new = text.split(" => ")
    assert old in src, old
    src = src.replace(old, new, 1)
    path = tmp_path / "edited.toml"
    path.write_text(src)
    return path


@pytest.mark.parametrize(
    "edit, message",
    [
        ('test_split = "val" => test_split = "dev"', None),  # caught against the parser's choices below
        ('optimizer = "lion" => optimizer = "sgd"', r"\[train\]: unknown optimizer 'sgd'; choose one of"),
        ("lr = 2e-4 => lr = -2e-4", r"\[train\]: lr must be > 0, got lr=-0.0002"),
        (
            'preset = "crate-base-patch16-224" => preset = "crate-bass-patch16-224"',
            r"unknown preset model.preset = 'crate-bass-patch16-224'.*did you mean crate-base-patch16-224",
        ),
        (
            'preset = "crate-base-patch16-224" => preset = "crate-base-patch16-224"\nset = { ista_steps = 3 }',
            r"model.set = \{'ista_steps': 3\} does not fit model.preset = 'crate-base-patch16-224': "
            r"ista_steps=3 does not apply to block='crate' with ista='square'",
        ),
        (
            'preset = "crate-base-patch16-224" => preset = "crate-base-patch16-224"\nset = { step_sise = 0.2 }',
            r"model.set = \{'step_sise': 0.2\} does not fit .*no field\(s\) \['step_sise'\]",
        ),
        (
            'format = "imagefolder" => format = "webdataset"',
            r"unknown data format data.format = 'webdataset'",
        ),
        ("lr = 2e-4 => lr = 2e-4\nmomentum = 0.9", r"unknown field train.momentum = 0.9"),
        ("[eval] => [evaluation]", r"unknown table \[evaluation\]"),
        ("[train] => [optimizer]", r"unknown table \[optimizer\]"),
        (
            "accumulation = 1 => accumulation = 2",
            r"train.global_batch = 512 != train.micro_batch 64 x batch.accumulation 2",
        ),
        ("global_batch = 512 => global_batch = 512.0", r"train.global_batch = 512.0 must be an integer"),
        ("betas = [0.9, 0.99] => betas = [0.9]", r"train.betas = \[0.9\] must be a list of 2 numbers"),
        ("lr = 2e-4 => lr = 2e-4\nsteps = 10", r"exactly one of train.steps and schedule.epochs"),
        (
            'tool = "train_vision" => tool = "train_everything"',
            r"unknown tool recipe.tool = 'train_everything'",
        ),
    ],
)
def test_bad_recipes_name_the_field_and_value(tmp_path, edit, message):
    path = _write(tmp_path, edit)
    if message is None:
        parser = _vision_like_parser()
        with pytest.raises(RecipeError, match=r"field tool.test_split = 'dev' is not one of \['val', 'test'\]"):
            parse_with_recipe(parser, ["--recipe", str(path)])
        return
    with pytest.raises(RecipeError, match=message):
        load_recipe(path)


def _vision_like_parser() -> argparse.ArgumentParser:
    """The trainer's flags plus train_vision's own, as a tool builds them."""
    from crate_core.train import add_train_args

    p = argparse.ArgumentParser()
    add_train_args(p)
    for flag, kw in {
        "--model": {},
        "--data": {},
        "--image-size": {"type": int},
        "--finetune": {},
        "--label-smoothing": {"type": float},
        "--test-split": {"choices": ["val", "test"]},
        "--set": {"action": "append"},
    }.items():
        p.add_argument(flag, **kw)
    return p


def test_command_line_overrides_the_recipe_and_checks_run_before_data(tmp_path, monkeypatch):
    data = tmp_path / "imagenet"
    path = _write(tmp_path, f'path = "data/imagenet" => path = "{data}"')
    parser = _vision_like_parser()
    # the data path is checked (and named) before anything is read
    with pytest.raises(RecipeError, match=rf"data.path = '{data}' does not exist"):
        parse_with_recipe(parser, ["--recipe", str(path)])
    data.mkdir()
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.warns(
        RecipeWarning, match=r"expected 31 GPU-hours.*no CUDA device: 500,456 steps would take about 31"
    ):
        args = parse_with_recipe(_vision_like_parser(), ["--recipe", str(path)])
    assert (args.lr, args.optimizer, args.global_batch, args.steps) == (2e-4, "lion", 512, 500456)
    with pytest.warns(RecipeWarning, match=r"1,000 steps would take about 0.0619 GPU-hours"):
        args = parse_with_recipe(
            _vision_like_parser(), ["--recipe", str(path), "--lr", "1e-3", "--steps", "1000"]
        )
    assert (args.lr, args.steps, args.weight_decay) == (1e-3, 1000, 0.05)
    # a recipe field the tool has no flag for
    from crate_core.train import add_train_args

    bare = add_train_args(argparse.ArgumentParser())
    for flag in ("--model", "--data", "--image-size", "--test-split"):
        bare.add_argument(flag)
    with pytest.raises(
        RecipeError, match=r"field tool.label_smoothing = 0.1: tools/train_vision.py has no such flag"
    ):
        parse_with_recipe(bare, ["--recipe", str(path)])
    # run with the wrong tool
    with pytest.raises(RecipeError, match=r"run it with tools/train_vision.py, not pretrain_gpt"):
        parse_with_recipe(_vision_like_parser(), ["--recipe", str(path)], tool="pretrain_gpt")
    # without --recipe nothing changes
    assert parse_with_recipe(_vision_like_parser(), ["--lr", "0.5"]).lr == 0.5


def test_batch_that_does_not_divide_over_the_processes(tmp_path, monkeypatch):
    data = tmp_path / "imagenet"
    data.mkdir()
    path = _write(tmp_path, f'path = "data/imagenet" => path = "{data}"')
    monkeypatch.setenv("WORLD_SIZE", "3")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RecipeWarning)
        with pytest.raises(
            RecipeError, match=r"global batch 512 does not divide over micro batch 64 x world size 3"
        ):
            parse_with_recipe(_vision_like_parser(), ["--recipe", str(path)])
        monkeypatch.setenv("WORLD_SIZE", "16")  # 512 / (64 x 16): no whole accumulation either
        with pytest.raises(RecipeError, match=r"does not divide"):
            parse_with_recipe(_vision_like_parser(), ["--recipe", str(path)])
        args = parse_with_recipe(_vision_like_parser(), ["--recipe", str(path), "--micro-batch", "32"])
    assert args.micro_batch == 32  # 512 = 32 x 1 x 16
    check_batch(argparse.Namespace(global_batch=512, micro_batch=64, grad_accum=None), world=4)  # accum 2


# ---- two optimizer steps per recipe -----------------------------------------------------------
def _jpeg_folder(root: Path, splits=("train", "val"), per_class=4, size=40) -> Path:
    from PIL import Image

    rng = np.random.default_rng(0)
    for split in splits:
        for c, colour in (("n01", (200, 40, 40)), ("n02", (40, 40, 200))):
            (root / split / c).mkdir(parents=True, exist_ok=True)
            for i in range(per_class):
                img = np.clip(rng.normal(colour, 30, (size, size + 8, 3)), 0, 255).astype(np.uint8)
                Image.fromarray(img).save(root / split / c / f"{i}.JPEG", quality=90)
    return root


def _cifar(root: Path, kind: str) -> Path:
    folder, n, key = (
        ("cifar-10-batches-py", 10, "labels")
        if kind == "cifar10"
        else ("cifar-100-python", 100, "fine_labels")
    )
    (root / folder).mkdir(parents=True)
    rng = np.random.default_rng(0)
    files = (
        [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"] if kind == "cifar10" else ["train", "test"]
    )
    for name in files:
        with open(root / folder / name, "wb") as f:
            pickle.dump({"data": rng.integers(0, 255, (4, 3072), dtype=np.uint8), key: [0, 1, 2, 3]}, f)
    meta, names_key = ("batches.meta", "label_names") if kind == "cifar10" else ("meta", "fine_label_names")
    with open(root / folder / meta, "wb") as f:
        pickle.dump({names_key: [f"c{i}" for i in range(n)]}, f)
    return root


def _hf(root: Path) -> Path:
    import datasets
    from PIL import Image

    rng = np.random.default_rng(0)
    feats = datasets.Features({"img": datasets.Image(), "label": datasets.ClassLabel(names=["a", "b"])})

    def split(n):
        imgs = [Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)) for _ in range(n)]
        return datasets.Dataset.from_dict({"img": imgs, "label": [i % 2 for i in range(n)]}, features=feats)

    datasets.DatasetDict({"train": split(8), "test": split(4)}).save_to_disk(str(root))
    return root


def _tokens(root: Path) -> Path:
    from crate_text import get_tokenizer
    from crate_text.data import write_tokens

    tok = get_tokenizer("gpt2")
    rng = np.random.default_rng(0)
    root.mkdir(parents=True)
    for name, n in (("train", 2000), ("val", 400)):
        write_tokens(root / f"{name}.bin", rng.integers(0, tok.vocab_size, n), tok.name, tok.n_ids)
    return root


@pytest.fixture(scope="module")
def smoke_data(tmp_path_factory):
    """One generated data set per format, made once for the whole module."""
    base = tmp_path_factory.mktemp("recipe-data")
    made: dict[str, Path] = {}

    def get(fmt: str) -> Path:
        if fmt not in made:
            maker = {
                "imagefolder": lambda p: _jpeg_folder(p),
                "cifar10": lambda p: _cifar(p, "cifar10"),
                "cifar100": lambda p: _cifar(p, "cifar100"),
                "hf": _hf,
                "tokens": _tokens,
            }[fmt]
            made[fmt] = maker(base / fmt)
        return made[fmt]

    return get


@pytest.mark.parametrize("path", RECIPES, ids=[p.stem for p in RECIPES])
def test_recipe_two_steps_on_cpu(path, smoke_data, tmp_path, monkeypatch, capsys, tool):
    r = load_recipe(path)
    fmt = r.get("data", "format")
    data = DATA_FORMATS[r.tool][fmt].format(path=smoke_data(fmt))
    if fmt.startswith("cifar"):  # generated batches cannot match torchvision's md5 sums
        monkeypatch.setattr("torchvision.datasets.cifar.check_integrity", lambda *a, **k: True)
    argv = [
        "--recipe",
        str(path),
        "--model",
        r.get("model", "smoke_preset"),
        *r.smoke_argv(),
        "--steps",
        "2",
        "--warmup-steps",
        "1",
        "--data",
        data,
        "--out-dir",
        str(tmp_path / "run"),
        "--wandb",
        "disabled",
        "--progress",
        "off",
    ]
    if r.get("model", "finetune"):
        start = crate_core.create(r.get("model", "smoke_preset"), num_classes=3)
        crate_core.save_pretrained(start, tmp_path / "start")
        argv += ["--finetune", str(tmp_path / "start")]
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.warns(RecipeWarning, match=rf"expected {r.get('recipe', 'gpu_hours'):g} GPU-hours"):
        result = tool(r.tool).main(argv)
    assert result["steps"] == 2
    final = tmp_path / "run" / "final"
    assert (final / "model.safetensors").is_file()
    model = crate_core.from_pretrained(final)
    assert type(model) is type(crate_core.create(r.get("model", "smoke_preset")))
    for key, value in r.get("model", "set", {}).items():  # [model] set reached the model's config
        assert getattr(model.config, key) == value, key

    # the recipe's promised metric, printed next to the published figure by the evaluation tool
    evaluator = {"train_vision": "eval_vision", "pretrain_gpt": "eval_lm"}.get(r.tool)
    if evaluator is None:
        return  # pretrain_mae's metric comes from tools/linear_probe.py (the recipe's [eval].command)
    if evaluator == "eval_vision":
        out = tool("eval_vision").main(
            ["--recipe", str(path), str(final), "--data", data, "--image-size", "32"]
        )
        measured = 100 * out["top1"]
    else:
        out = tool("eval_lm").main(
            ["--recipe", str(path), "--model", str(final), "--data", f"{data}/val.bin"]
        )
        measured = out["loss"]
    pub = r.get("recipe", "published")
    expected = f"measured {measured:.4g}, " + (
        f"published {pub:g}" if pub is not None else "no published figure"
    )
    assert expected in capsys.readouterr().out
