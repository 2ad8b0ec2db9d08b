"""Self-distillation on the shared trainer: every registered vision family as a backbone, the EMA teacher
(DINO's cosine momentum, checked against the formula), multi-crop shapes, the weighted k-NN against a direct
vote, exact resume, ZeRO 1/2 in one process, and the teacher export read by crate_core.from_pretrained,
tools/eval_knn.py, tools/segment.py and tools/train_vision.py --finetune."""

from __future__ import annotations

import importlib.util
import json
import math
import os
from pathlib import Path

import crate_core
import crate_vision  # noqa: F401
import pytest
import torch
from crate_core.train import TrainConfig, Trainer
from crate_vision.data import ShapesDataset
from crate_vision.ssl import (
    BatchMultiCrop,
    MultiCrop,
    MultiCropDataset,
    SelfDistillation,
    SSLConfig,
    crop_sizes,
    knn_scores,
    momentum_at,
)
from crate_vision.ssl.train import BatchCropLoss, ssl_loss

ROOT = Path(__file__).resolve().parents[2]
os.environ["WANDB_MODE"] = "disabled"


def load_tool(name: str):
    spec = importlib.util.spec_from_file_location(f"ssl_test_tool_{name}", ROOT / "tools" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _crops(m: int = 3, local: int = 2, g: int = 32, l: int = 16):
    gen = torch.Generator().manual_seed(0)
    return [torch.randn(m, 3, g, g, generator=gen) for _ in range(2)] + [
        torch.randn(m, 3, l, l, generator=gen) for _ in range(local)
    ]


def test_momentum_schedule_is_dino_cosine():
    """m_i = 1 - (1 - m0)(1 + cos(pi i / T)) / 2: m0 at the start, (1 + m0)/2 halfway, 1 at the end."""
    assert momentum_at(0, 100, 0.996) == pytest.approx(0.996)
    assert momentum_at(50, 100, 0.996) == pytest.approx(0.998)
    assert momentum_at(100, 100, 0.996) == pytest.approx(1.0)


def test_crop_sizes_and_multicrop_views():
    assert crop_sizes(224, 16) == (224, 96)
    assert crop_sizes(32, 8) == (32, 16)
    mc = MultiCrop(32, 16, local_crops=3, mean=(0.5,) * 3, std=(0.5,) * 3)
    crops = mc(torch.rand(3, 40, 40))
    assert [tuple(c.shape) for c in crops] == [(3, 32, 32)] * 2 + [(3, 16, 16)] * 3
    assert all(c.dtype == torch.float32 and c.min() >= -1 - 1e-6 and c.max() <= 1 + 1e-6 for c in crops)
    ds = MultiCropDataset(ShapesDataset(4, 32, normalize=False), mc)
    batch = torch.utils.data.default_collate([ds[i] for i in range(4)])
    assert len(batch[0]) == 5 and batch[0][0].shape == (4, 3, 32, 32) and batch[0][4].shape == (4, 3, 16, 16)
    with pytest.raises(ValueError, match="local_scale"):
        MultiCrop(32, 16, 2, local_scale=(0.5, 0.1))
    with pytest.raises(ValueError, match="color_jitter"):
        MultiCrop(32, 16, 2, color_jitter=(0.4, 0.4, 0.2, 0.7))  # a hue shift beyond half the circle
    with pytest.raises(ValueError, match="grayscale_p"):
        MultiCrop(32, 16, 2, grayscale_p=1.5)


def test_multicrop_colour_arguments_reach_the_views():
    """No jitter and p(grey) = 1: every view is grey (R = G = B) with the image's own brightness order; the
    SSLConfig fields build the same augmentation through multicrop_for."""
    from crate_vision.ssl import SSLConfig
    from crate_vision.ssl.train import multicrop_for

    mc = MultiCrop(32, 16, 2, mean=(0.0,) * 3, std=(1.0,) * 3, color_jitter=(0, 0, 0, 0), grayscale_p=1.0)
    for crop in mc(torch.rand(3, 32, 32)):
        assert torch.allclose(crop[0], crop[1], atol=1e-6) and torch.allclose(crop[1], crop[2], atol=1e-6)
    cfg = SSLConfig(local_crops=1, color_jitter=(0, 0, 0, 0), grayscale_p=1.0, global_scale=(1.0, 1.0))
    built = multicrop_for(crate_core.create("crate-tiny-test", num_classes=0), cfg, (0.0,) * 3, (1.0,) * 3)
    image = torch.rand(3, 32, 32)
    grey = (0.2989 * image[0] + 0.587 * image[1] + 0.114 * image[2]).clamp(0, 1)
    g1 = built(image)[0]
    assert g1.shape == (3, 32, 32) and torch.allclose(g1[0], g1[2], atol=1e-6)
    assert torch.allclose(g1[0], grey, atol=0.02) or torch.allclose(g1[0], grey.flip(-1), atol=0.02)  # whole image, maybe flipped


def test_batch_multicrop_views_and_arguments():
    """BatchMultiCrop gives MultiCrop's views for a whole batch, each image with its own random parameters,
    and refuses MultiCrop's bad arguments with the same message."""
    images = torch.rand(1, 3, 32, 32).expand(6, 3, 32, 32).contiguous()  # one image six times
    crops = BatchMultiCrop(32, 16, local_crops=3, mean=(0.5,) * 3, std=(0.5,) * 3)(images)
    assert [tuple(c.shape) for c in crops] == [(6, 3, 32, 32)] * 2 + [(6, 3, 16, 16)] * 3
    assert all(c.dtype == torch.float32 and c.min() >= -1 - 1e-5 and c.max() <= 1 + 1e-5 for c in crops)
    for view in crops:  # the same image, six different draws
        assert len({tuple(v.flatten()[:64].tolist()) for v in view}) > 1
    for bad, match in (({"local_scale": (0.5, 0.1)}, "local_scale"), ({"grayscale_p": 1.5}, "grayscale_p"),
                       ({"blur_sigma": (2.0, 1.0)}, "blur_sigma")):
        with pytest.raises(ValueError, match=match):
            BatchMultiCrop(32, 16, 2, **bad)
    with pytest.raises(ValueError, match="float .B, C, H, W. batch"):
        BatchMultiCrop(32, 16, 0)(torch.rand(3, 32, 32))


def test_batch_multicrop_whole_image_crop_is_the_image_or_its_mirror():
    """Crop area 1 (every aspect ratio other than 1 exceeds the image, so the crop is the whole image), no
    jitter, no grey, a blur of sigma 0.001 px (a 1-tap kernel), mean 0 and std 1: global view 1 is each image
    or its horizontal mirror, and both occur in a batch of 64."""
    images = torch.rand(64, 3, 32, 32)
    mc = BatchMultiCrop(32, 16, 0, (0.0,) * 3, (1.0,) * 3, global_scale=(1.0, 1.0), color_jitter=(0, 0, 0, 0),
                        grayscale_p=0.0, blur_sigma=(1e-3, 1e-3))
    g1 = mc(images)[0]
    same = (g1 - images).abs().flatten(1).amax(1) < 1e-4
    mirror = (g1 - images.flip(-1)).abs().flatten(1).amax(1) < 1e-4
    assert bool((same | mirror).all()) and same.any() and mirror.any()


def test_batch_multicrop_grey_views_and_sslconfig():
    """p(grey) = 1 without jitter: R = G = B in every view (solarisation and blur keep grey grey);
    multicrop_for builds the batched augmentation from the same SSLConfig fields."""
    from crate_vision.ssl.train import multicrop_for

    cfg = SSLConfig(local_crops=2, color_jitter=(0, 0, 0, 0), grayscale_p=1.0, blur_sigma=(0.5, 1.0))
    built = multicrop_for(crate_core.create("crate-tiny-test", num_classes=0), cfg, (0.0,) * 3, (1.0,) * 3, "batch")
    assert isinstance(built, BatchMultiCrop) and built.ncrops == 4
    for crop in built(torch.rand(5, 3, 32, 32)):
        assert torch.allclose(crop[:, 0], crop[:, 1], atol=1e-5) and torch.allclose(crop[:, 1], crop[:, 2], atol=1e-5)
    with pytest.raises(ValueError, match="crops must be one of"):
        multicrop_for(crate_core.create("crate-tiny-test", num_classes=0), cfg, (0.0,) * 3, (1.0,) * 3, "gpu")


def test_quarter_turns_rotate_each_image_by_its_own_multiple_of_90_degrees():
    """quarter_turn: every image of the batch is rot90(image, k) for some k, and all four k occur in 64 draws;
    SSLConfig.quarter_turns reaches both multi-crop forms (square views of the right size)."""
    from crate_vision.ssl.multicrop import quarter_turn
    from crate_vision.ssl.train import multicrop_for

    x = torch.rand(64, 3, 8, 8)
    turned = quarter_turn(x)
    ks = [[k for k in range(4) if torch.equal(turned[i], torch.rot90(x[i], k, dims=(-2, -1)))] for i in range(64)]
    assert all(len(k) == 1 for k in ks) and {k[0] for k in ks} == {0, 1, 2, 3}
    cfg = SSLConfig(local_crops=1, quarter_turns=True)
    backbone = crate_core.create("crate-tiny-test", num_classes=0)
    assert [c.shape for c in multicrop_for(backbone, cfg, (0.5,) * 3, (0.5,) * 3)(torch.rand(3, 32, 32))] == [
        (3, 32, 32), (3, 32, 32), (3, 16, 16)]
    assert [c.shape for c in multicrop_for(backbone, cfg, (0.5,) * 3, (0.5,) * 3, "batch")(torch.rand(2, 3, 32, 32))] == [
        (2, 3, 32, 32), (2, 3, 32, 32), (2, 3, 16, 16)]


def test_batch_crop_loss_draws_fixed_crops_in_eval_mode():
    """The layer-wise measurement runs the loss in eval mode on a fixed batch of images: the crops are then the
    same at every call and the global RNG stream is untouched; in training mode every call draws afresh."""
    loss_fn = BatchCropLoss(BatchMultiCrop(32, 16, 1, (0.5,) * 3, (0.5,) * 3))
    images = torch.rand(4, 3, 32, 32)
    torch.manual_seed(5)
    first = loss_fn.crops(images, fixed=True)
    after = torch.rand(3)
    torch.manual_seed(5)
    assert torch.equal(after, torch.rand(3))  # the fixed draw consumed nothing from the training stream
    second = loss_fn.crops(images, fixed=True)
    assert all(torch.equal(a, b) for a, b in zip(first, second))
    assert not torch.equal(loss_fn.crops(images, fixed=False)[0], loss_fn.crops(images, fixed=False)[0])


def test_batch_crops_refuse_pil_images(tmp_path):
    from crate_vision.ssl.train import pretrain
    from PIL import Image

    images = [(Image.new("RGB", (32, 32)), 0)] * 4
    cfg = TrainConfig(out_dir=str(tmp_path), steps=1, micro_batch=2, wandb="disabled", progress="off")
    with pytest.raises(ValueError, match="crops='batch' needs same-size"):
        pretrain(crate_core.create("crate-tiny-test", num_classes=0), SSLConfig(local_crops=0), cfg, images,
                 (0.5,) * 3, (0.5,) * 3, crops="batch")


@pytest.mark.parametrize("name", ["crate-tiny-test", "crate-alpha-tiny-test", "tost-tiny-test", "vit-tiny-test"])
@pytest.mark.parametrize("method", ["dino", "simdino"])
def test_every_vision_family_trains_as_a_student(name, method):
    torch.manual_seed(0)
    backbone = crate_core.create(name, num_classes=0)
    model = SelfDistillation(backbone, SSLConfig(method=method, local_crops=2, hidden_dim=32, bottleneck_dim=16, out_dim=64))
    loss, metrics = model(_crops())
    assert torch.isfinite(loss)
    if method == "simdino":
        assert set(metrics) == {"compression", "expansion"}
    loss.backward()
    assert all(p.grad is None for p in model.teacher_parameters())
    assert all(not p.requires_grad for p in model.teacher_parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.student.parameters())


def test_teacher_ema_update_matches_the_formula():
    torch.manual_seed(0)
    model = SelfDistillation(crate_core.create("crate-tiny-test", num_classes=0),
                             SSLConfig(local_crops=0, hidden_dim=16, bottleneck_dim=8, total_steps=10))
    with torch.no_grad():
        for p in model.student_parameters():
            p.add_(torch.randn_like(p))
    before = [t.clone() for t in model.teacher_parameters()]
    model.after_step(4)  # optimizer step 4 -> schedule index 3
    m = 1 - (1 - 0.996) * (1 + math.cos(math.pi * 3 / 10)) / 2
    for t0, t, s in zip(before, model.teacher_parameters(), model.student_parameters()):
        torch.testing.assert_close(t, m * t0 + (1 - m) * s, rtol=1e-6, atol=1e-7)
    assert int(model.steps_done) == 4


def test_teacher_ema_with_bf16_weights_accumulates_in_float32():
    """DeepSpeed's bf16 casts the teacher too: each EMA step toward the student moves it by 0.004 * 0.5 = 0.002,
    under half of bf16's spacing at 1 (2^-7), so bf16 arithmetic would leave the teacher at 1 for ever; the
    teacher must follow the float32 recursion instead (rounded to bf16 when written back)."""
    torch.manual_seed(0)
    model = SelfDistillation(crate_core.create("crate-tiny-test", num_classes=0),
                             SSLConfig(local_crops=0, hidden_dim=16, bottleneck_dim=8, total_steps=1000))
    with torch.no_grad():
        for s, t in zip(model.student_parameters(), model.teacher_parameters()):
            t.copy_(torch.full_like(t, 1.0))
            s.copy_(torch.full_like(s, 1.5))
    model.bfloat16()
    want = torch.tensor(1.0, dtype=torch.float64)
    student = 1.5
    for step in range(1, 21):
        m = 1 - (1 - 0.996) * (1 + math.cos(math.pi * (step - 1) / 1000)) / 2
        want = m * want + (1 - m) * student
        model.after_step(step)
    t = model.teacher_parameters()[0]
    assert t.dtype == torch.bfloat16
    assert torch.equal(t, torch.full_like(t, float(want)))  # bf16 of the float32 recursion (about 1.039)
    assert float(t.flatten()[0]) > 1.03


def test_knn_vote_matches_a_direct_count():
    """score_c = sum over the k most cosine-similar training features of class c of exp(s / T)."""
    train_x = torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.1, 0.9], [-1.0, 0.2]])
    train_y = torch.tensor([0, 0, 1, 1, 2])
    test_x = torch.tensor([[0.8, 0.3], [0.2, 1.0]])
    k, T = 3, 0.07
    got = knn_scores(train_x, train_y, test_x, 3, k=k, temperature=T)
    for i, x in enumerate(test_x):
        sims = [float(x @ t / (x.norm() * t.norm())) for t in train_x]
        top = sorted(range(5), key=lambda j: -sims[j])[:k]
        want = [sum(math.exp(sims[j] / T) for j in top if train_y[j] == c) for c in range(3)]
        torch.testing.assert_close(got[i], torch.tensor(want, dtype=torch.float32), rtol=1e-5, atol=1e-3)
    with pytest.raises(ValueError, match="k must be"):
        knn_scores(train_x, train_y, test_x, 3, k=6)


def _trainer(out: Path, method: str = "simdino", steps: int = 4, callbacks=(), crops: str = "image", **kw):
    torch.manual_seed(0)
    backbone = crate_core.create("crate-tiny-test", num_classes=0)
    cfg = TrainConfig(out_dir=str(out), steps=steps, micro_batch=4, lr=1e-3, warmup_steps=1, log_every=1,
                      wandb="disabled", progress="off", seed=0, **kw)
    model = SelfDistillation(backbone, SSLConfig(method=method, local_crops=2, hidden_dim=32, bottleneck_dim=16,
                                                 out_dim=64, total_steps=steps, warmup_teacher_temp_steps=3,
                                                 freeze_last_layer_steps=1))
    images = ShapesDataset(32, 32, normalize=False)
    if crops == "batch":  # the crops drawn per batch in the training process, from the trainer's RNG stream
        data, loss_fn = images, BatchCropLoss(BatchMultiCrop(32, 16, 2, (0.5,) * 3, (0.5,) * 3))
    else:
        data, loss_fn = MultiCropDataset(images, MultiCrop(32, 16, 2, (0.5,) * 3, (0.5,) * 3)), ssl_loss
    return Trainer(cfg, model, data, loss_fn=loss_fn, after_step=model.after_step, callbacks=callbacks), model


@pytest.mark.parametrize(("method", "crops"), [("dino", "image"), ("simdino", "image"), ("simdino", "batch")])
def test_resume_reproduces_the_uninterrupted_run(tmp_path, method, crops):
    """Student, teacher, heads, the DINO centre and the step count all come back from the checkpoint (with
    batch crops the restored RNG state redraws the same crops)."""
    tr, straight = _trainer(tmp_path / "a", method, crops=crops)
    tr.fit()
    tr.close()

    class Stop(Exception):
        pass

    def stop_at_2(trainer, step, row):
        if step == 2:
            raise Stop

    tr, _ = _trainer(tmp_path / "b", method, callbacks=[stop_at_2], ckpt_every=1, crops=crops)
    with pytest.raises(Stop):
        tr.fit()
    tr.close()
    tr, resumed = _trainer(tmp_path / "b", method, resume="auto", crops=crops)
    assert tr.step == 1  # the callback stops step 2 before its checkpoint: the step-1 one is the newest
    tr.fit()
    tr.close()
    a, b = straight.state_dict(), resumed.state_dict()
    assert set(a) == set(b) and any(k.startswith("teacher.") for k in a)
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=0, atol=0, msg=k)
    if method == "dino":
        assert a["loss.center"].abs().sum() > 0


@pytest.mark.parametrize("stage", [1, 2])
def test_zero_stages_with_the_frozen_teacher_in_one_process(tmp_path, stage):
    tr, model = _trainer(tmp_path / f"z{stage}", steps=2, engine="deepspeed", zero_stage=stage)
    teacher0 = [p.detach().clone() for p in model.teacher_parameters()]
    res = tr.fit()
    tr.close()
    assert tr.engine_kind == "deepspeed" and tr.zero_stage == stage and res["steps"] == 2
    assert math.isfinite(res["loss"])
    moved = [float((p - p0).abs().max()) for p, p0 in zip(model.teacher_parameters(), teacher0)]
    assert max(moved) > 0  # the EMA ran after each optimizer step


def test_tool_exports_the_teacher_for_knn_segmentation_and_finetuning(tmp_path, capsys):
    out = tmp_path / "ssl"
    argv = ["--model", "crate-tiny-test", "--steps", "2", "--micro-batch", "4", "--train-size", "16",
            "--local-crops", "2", "--hidden-dim", "32", "--bottleneck-dim", "16", "--eval-every", "2",
            "--knn-train-size", "24", "--knn-eval-size", "6", "--num-workers", "0", "--log-every", "1", "--layerwise-every", "2",
            "--out-dir", str(out), "--wandb", "disabled", "--progress", "off"]
    result = load_tool("pretrain_ssl").main(argv)
    assert result["steps"] == 2 and 0 <= result["eval/knn_top1"] <= 1
    layers = [json.loads(line)["layers"] for line in (out / "layerwise.jsonl").read_text().splitlines()]
    assert {"teacher.trunk", "student.trunk"} <= set(layers[-1])  # --layerwise-every measures the teacher too
    export = out / "final"
    model = crate_core.from_pretrained(export)
    assert type(model).__name__ == "CRATEClassifier" and model.config.num_classes == 0
    # the export is the teacher (the checkpoint's teacher.* weights), not the student
    state = torch.load(Path(result["checkpoint"]) / "ds" / "mp_rank_00_model_states.pt", weights_only=False)["module"]
    for k, v in model.state_dict().items():
        torch.testing.assert_close(v, state[f"teacher.{k}"].float(), rtol=0, atol=0)
    assert any(not torch.equal(state[f"teacher.{k}"], state[f"student.{k}"]) for k in model.state_dict())

    knn = load_tool("eval_knn").main([str(export), "--train-size", "12", "--test-size", "6", "--k", "5", "--linear-probe"])
    assert {"top1", "at_init", "linear_probe"} <= set(knn["models"][str(export)]) and "raw_pixels" in knn

    seg = load_tool("segment").main(["miou", "--model-dir", str(export), "--n", "4"])
    assert seg is not None

    ft = load_tool("train_vision").main(
        ["--finetune", str(export), "--steps", "1", "--micro-batch", "4", "--train-size", "8", "--eval-size", "4",
         "--eval-every", "0", "--out-dir", str(tmp_path / "ft"), "--wandb", "disabled", "--progress", "off"]
    )
    assert ft["steps"] == 1
    assert crate_core.from_pretrained(tmp_path / "ft" / "final").config.num_classes == 6


@pytest.mark.parametrize("name", ["crate-tiny-test", "vit-tiny-test"])
def test_eval_knn_initialisation_floor_is_the_weights_pretraining_started_from(name, tmp_path):
    """tools/pretrain_ssl.py seeds then builds crate_core.create(name, num_classes=0); tools/eval_knn.py's
    at-initialisation floor seeds then builds type(export)(export.config): the same weights for the same seed."""
    from crate_core.hub import save_pretrained

    torch.manual_seed(3)
    start = crate_core.create(name, num_classes=0)
    with torch.no_grad():
        for p in start.parameters():
            p.add_(1.0)  # the export holds trained weights, not the initial ones
    save_pretrained(start, tmp_path / "final")
    export = crate_core.from_pretrained(tmp_path / "final", task="classify")
    torch.manual_seed(3)
    floor = type(export)(export.config)
    torch.manual_seed(3)
    started = crate_core.create(name, num_classes=0)
    for (k, a), b in zip(started.state_dict().items(), floor.state_dict().values()):
        assert torch.equal(a, b), k


def test_tool_augmentation_flags_reach_sslconfig_and_default_to_dino(monkeypatch, tmp_path):
    """pretrain_ssl passes only the augmentation flags given (as tuples); the rest keep SSLConfig's DINO values."""
    import crate_vision.ssl.train as ssl_train
    from crate_vision.ssl.multicrop import DINO_COLOR_JITTER, DINO_GLOBAL_SCALE, DINO_LOCAL_SCALE

    seen = []
    monkeypatch.setattr(ssl_train, "pretrain", lambda backbone, ssl_cfg, *a, **k: seen.append(ssl_cfg) or {
        "steps": 0, "train_time_s": 0.0, "loss": 0.0, "export": ""})
    common = ["--model", "crate-tiny-test", "--steps", "1", "--eval-every", "0", "--train-size", "8",
              "--out-dir", str(tmp_path), "--wandb", "disabled"]
    tool = load_tool("pretrain_ssl")
    tool.main(common)
    tool.main([*common, "--color-jitter", "0.8", "0.8", "0.8", "0.2", "--grayscale-p", "0.5", "--local-scale", "0.1", "0.3",
               "--blur-sigma", "0.5", "1.5", "--quarter-turns"])
    default, given = seen
    assert (default.global_scale, default.local_scale, default.color_jitter, default.grayscale_p, default.blur_sigma) == (
        DINO_GLOBAL_SCALE, DINO_LOCAL_SCALE, DINO_COLOR_JITTER, 0.2, None)
    assert (given.global_scale, given.local_scale, given.color_jitter, given.grayscale_p, given.blur_sigma) == (
        DINO_GLOBAL_SCALE, (0.1, 0.3), (0.8, 0.8, 0.8, 0.2), 0.5, (0.5, 1.5))
    assert (default.quarter_turns, given.quarter_turns) == (False, True)
