"""benchmarks/harness.py (timing, memory, models, loss) and trainer_overhead's bare-loop schedule."""

import math

import pytest
import torch

from benchmarks import harness, trainer_overhead

CPU = torch.device("cpu")


def test_interleaved_rounds_prepare_and_medians(monkeypatch):
    """Every round calls each case once, in order, after its prepare; warm-up rounds are not recorded;
    the wall time of a call is the clock difference around it, and medians take the middle value."""
    now = [0.0]
    monkeypatch.setattr(harness.time, "perf_counter", lambda: now[0])
    calls = []
    durations = {"a": iter([9.0, 1.0, 3.0, 2.0]), "b": iter([9.0, 5.0, 4.0, 6.0])}

    def case(name):
        def run():
            calls.append(name)
            now[0] += next(durations[name])

        return run

    times = harness.interleaved({"a": case("a"), "b": case("b")}, warmup=1, repeats=3, device=CPU,
                                prepare=lambda name: calls.append("prep-" + name))
    assert calls == ["prep-a", "a", "prep-b", "b"] * 4
    assert times["a"]["wall"] == [1.0, 3.0, 2.0] and times["b"]["wall"] == [5.0, 4.0, 6.0]
    assert len(times["a"]["cpu"]) == 3
    assert harness.medians(times) == {"a": 2.0, "b": 5.0}


def test_timed_is_the_median_and_bad_counts_fail(monkeypatch):
    now = [0.0]
    monkeypatch.setattr(harness.time, "perf_counter", lambda: now[0])
    steps = iter([100.0, 3.0, 1.0, 2.0])

    def fn():
        now[0] += next(steps)

    assert harness.timed(fn, warmup=1, repeats=3, device=CPU) == 2.0
    with pytest.raises(ValueError, match="repeats"):
        harness.timed(fn, warmup=0, repeats=0, device=CPU)


def test_peak_memory_sees_an_allocation():
    with harness.PeakMemory(CPU) as mem:
        x = torch.ones(16 * 2**20)  # 64 MiB, written so the pages are resident
        del x
    if mem.method == "ru_maxrss delta":
        pytest.skip("no resettable peak RSS on this system")
    assert mem.bytes >= 0.9 * 64 * 2**20


def test_autocast_and_models():
    with pytest.raises(ValueError, match="amp must be one of"):
        harness.autocast(CPU, "fp16")
    with harness.autocast(CPU, "bf16"):
        assert torch.is_autocast_enabled("cpu")
    vit = harness.build_model("timm:vit_tiny_patch16_224", num_classes=3, image_size=32)
    assert vit(torch.randn(2, 3, 32, 32)).shape == (2, 3)
    assert harness.count_params(vit) == sum(p.numel() for p in vit.parameters()) > 0


def test_lm_loss_is_the_cross_entropy_with_a_token_count():
    torch.manual_seed(0)
    model = harness.build_model("crate-gpt-nano", depth=1)
    x, y = torch.randint(0, 100, (2, 8)), torch.randint(0, 100, (2, 8))
    loss, metrics = harness.lm_loss(model, (x, y))
    logits = model(x)
    assert torch.allclose(loss, torch.nn.functional.cross_entropy(logits.flatten(0, 1), y.flatten()), atol=1e-5)
    assert metrics == {"tokens": 16}


@pytest.mark.parametrize("warmup", [0, 1, 5])
def test_bare_loop_schedule_is_the_trainers(warmup):
    """lr_s = lr (s + 1) / W for s < W, then min_lr + (lr - min_lr)(1 + cos(pi (s - W) / (S - W))) / 2."""
    steps, lr, min_lr = 20, 1e-2, 1e-3
    cfg = trainer_overhead.TrainConfig(steps=steps, lr=lr, min_lr=min_lr, warmup_steps=warmup)
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=lr)
    sched = trainer_overhead.warmup_cosine(opt, cfg)
    for s in range(steps):
        if s < warmup:
            want = lr * (s + 1) / warmup
        else:
            want = min_lr + (lr - min_lr) * (1 + math.cos(math.pi * (s - warmup) / (steps - warmup))) / 2
        assert opt.param_groups[0]["lr"] == pytest.approx(want, rel=1e-6), s
        opt.step()
        sched.step()


# ---- the GPU scorecard (benchmarks/gpu_readiness.py) -------------------------------------------
def test_block_compiling_finds_every_stack_once():
    """compile_blocks compiles the blocks of the outermost stacks: CRATE's trunk layers and timm's blocks
    (an nn.Sequential), not the pieces inside a block."""
    from benchmarks.gpu_readiness import compile_blocks

    depth = 3
    crate = harness.build_model("crate-tiny-test", depth=depth)
    assert compile_blocks(crate, "eager") == depth
    vit = harness.build_model("timm:vit_tiny_patch16_224", depth=depth, num_classes=3, image_size=32)
    assert compile_blocks(vit, "eager") == depth
    x = torch.randn(2, 3, 32, 32)
    assert vit(x).shape == (2, 3)


def test_scorecard_targets_follow_their_thresholds():
    """MFU >= 40%; CRATE-B/16 / ViT-B/16 >= 2.5x training and >= 3x inference img/s; Trainer / bare <= 1.05
    (torch engine) and <= 1.10 (ZeRO-1/2); a missing figure is "not measured"."""
    from types import SimpleNamespace

    from benchmarks import gpu_readiness as g

    st = SimpleNamespace(pairs=g.PAIRS, lm=g.LM)
    crate, vit = g.PAIRS[0][0], g.PAIRS[0][1]
    row = lambda m, tr, inf: {"model": m, "train_per_s": tr, "infer_per_s": inf}  # noqa: E731
    res = {
        "trainer": {"rows": [{"run": "trainer-torch", "mfu": 0.41}]},
        "pairs-eager": {"rows": [row(crate, 250.0, 299.0), row(vit, 100.0, 100.0)]},
        "overhead": {"rows": [{"run": "trainer-torch", "ratio": 1.05}, {"run": "trainer-zero1", "ratio": 1.11},
                              {"run": "trainer-zero2", "ratio": 1.0}]},
    }
    verdicts = [v for _, _, v in g.targets(res, st)]
    assert verdicts == ["met", "met", "not met", "not measured", "not measured", "met", "not met", "met"]
    res["trainer"]["rows"][0]["mfu"] = 0.399
    assert g.targets(res, st)[0][2] == "not met"


def test_driver_options_stay_with_the_driver():
    from benchmarks.gpu_readiness import _is_driver_arg

    argv = ["--smoke", "--only", "trainer", "profile", "--batch", "gpt=4", "--out=/x", "--budget", "60", "--repeats", "2"]
    kept = [a for i, a in enumerate(argv) if not _is_driver_arg(argv, i)]
    assert kept == ["--smoke", "--batch", "gpt=4", "--repeats", "2"]


def test_gpu_scorecard_smoke_on_the_cpu(tmp_path):
    """The whole scorecard on the CPU with tiny presets: every section finishes, and the scorecard holds one
    line per target, the pair tables, both Trainer tables, train_vision's wall time and the kernel tables."""
    import json
    import subprocess
    import sys

    out = tmp_path / "gpu"
    proc = subprocess.run([sys.executable, "-m", "benchmarks.gpu_readiness", "--smoke", "--out", str(out)],
                          cwd=harness.ROOT, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = json.loads((out / "results.json").read_text())
    assert {n: s["status"] for n, s in res["sections"].items()} == {n: "done" for n in res["sections"]}
    assert set(res["sections"]) == {"pairs-eager", "trainer", "pairs-compiled", "overhead", "profile", "train-vision"}
    assert all("error" not in r for r in res["pairs-eager"]["rows"]) and len(res["pairs-eager"]["rows"]) == 8
    assert all(r["blocks_compiled"] >= 2 for r in res["pairs-compiled"]["rows"])
    assert [r["run"] for r in res["overhead"]["rows"]] == ["trainer-torch", "trainer-zero1", "trainer-zero2"]
    assert all("error" not in r and r["ratio"] > 0 for r in res["overhead"]["rows"])
    assert res["train-vision"]["returncode"] == 0 and res["train-vision"]["steps"] == 2
    md = (out / "scorecard.md").read_text()
    assert sum(line.endswith(("**met** |", "**not met** |", "**not measured** |")) for line in md.splitlines()) == 8
    for needle in ("## Pairs, eager", "## Pairs, compiled", "## Trainer vs the bare loop, compiled",
                   "## Trainer vs the bare loop, eager", "tools/train_vision.py", "## Kernels"):
        assert needle in md, needle
    assert (out / "profile-crate-b16-infer.txt").is_file() and (out / "profile-crate-gpt-train.txt").is_file()
