"""The trainer's structure (issue 23): helpers take values and return results, the torch engine is
built from the TrainConfig, and only the model input is cast to bf16."""

from __future__ import annotations

import ast
from collections import namedtuple
from pathlib import Path

import pytest
import torch
from crate_core.train import TrainConfig
from crate_core.train.data import to_device
from crate_core.train.engine import TorchEngine
from torch import nn

TRAIN = Path(__file__).resolve().parents[2] / "packages/crate-core/src/crate_core/train"


def test_no_helper_takes_or_writes_the_trainer():
    """Outside trainer.py no function has a parameter named ``trainer`` or assigns an attribute of one,
    and no helper module imports the Trainer: only the Trainer assigns its own state."""
    for path in sorted(TRAIN.glob("*.py")):
        if path.name in ("trainer.py", "__init__.py"):
            continue
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                names = [a.arg for a in node.args.args + node.args.kwonlyargs + node.args.posonlyargs]
                assert "trainer" not in names, f"{path.name}: {node.name}() takes the trainer"
            targets = []
            if isinstance(node, ast.Assign):
                targets = node.targets
            elif isinstance(node, (ast.AugAssign, ast.AnnAssign)):
                targets = [node.target]
            for t in targets:
                if isinstance(t, ast.Attribute) and isinstance(t.value, ast.Name):
                    assert t.value.id != "trainer", f"{path.name}:{t.lineno} writes trainer.{t.attr}"
            if isinstance(node, ast.ImportFrom) and node.module and node.module.endswith("trainer"):
                raise AssertionError(f"{path.name} imports {node.module}")


def test_torch_engine_takes_its_optimizer_from_the_config():
    cfg = TrainConfig(lr=2e-3, betas=(0.8, 0.9), eps=1e-6, weight_decay=0.3, grad_clip=0.5, micro_batch=4)
    model = nn.Sequential(nn.Linear(3, 4), nn.LayerNorm(4))
    engine = TorchEngine(model, cfg, torch.device("cpu"), bf16=False, grad_accum=2)
    opt = engine.basic_optimizer
    assert isinstance(opt, torch.optim.AdamW)
    for group in opt.param_groups:
        assert (group["betas"], group["eps"]) == ((0.8, 0.9), 1e-6)
        assert group["lr"] == pytest.approx(2e-3 * cfg.warmup_steps ** -1)  # warm-up step 0: lr / W
    decays = sorted((len(g["params"]), g["weight_decay"]) for g in opt.param_groups)
    assert decays == [(1, 0.3), (3, 0.0)]  # the Linear's matrix decays; its bias and the LayerNorm do not
    assert (engine.clip, engine.grad_accum) == (0.5, 2)


def test_to_device_casts_only_the_model_input():
    """MixUp soft labels and float regression targets stay float32; the image input becomes bf16;
    integer tensors never change."""
    images, soft = torch.rand(2, 3, 4, 4), torch.softmax(torch.randn(2, 5), -1)
    x, y = to_device((images, soft), torch.device("cpu"), torch.bfloat16)
    assert (x.dtype, y.dtype) == (torch.bfloat16, torch.float32)
    torch.testing.assert_close(y, soft, rtol=0, atol=0)
    out = to_device({"x": images, "y": torch.randn(2, 3), "ids": torch.arange(2)}, torch.device("cpu"), torch.bfloat16)
    assert [v.dtype for v in out.values()] == [torch.bfloat16, torch.float32, torch.int64]
    Pair = namedtuple("Pair", "inputs labels")
    got = to_device(Pair(torch.arange(6).view(2, 3), torch.rand(2)), torch.device("cpu"), torch.bfloat16)
    assert type(got) is Pair and (got.inputs.dtype, got.labels.dtype) == (torch.int64, torch.float32)
    assert to_device(images, torch.device("cpu"), torch.bfloat16).dtype == torch.bfloat16
    assert to_device((images, soft), torch.device("cpu"), None)[0].dtype == torch.float32
