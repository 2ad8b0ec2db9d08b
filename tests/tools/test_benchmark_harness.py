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
