"""tools/pretrain_mae.py and tools/linear_probe.py end to end on a tiny model (CPU, seconds)."""

import json

import pytest
import torch


@pytest.fixture(autouse=True)
def _no_wandb(monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "disabled")


def test_pretrain_then_probe(tmp_path, tool):
    run = tmp_path / "run"
    result = tool("pretrain_mae").main(
        [
            "--model",
            "crate-mae-tiny-test",
            "--steps",
            "6",
            "--micro-batch",
            "8",
            "--warmup-steps",
            "2",
            "--train-size",
            "64",
            "--eval-size",
            "16",
            "--eval-every",
            "3",
            "--log-every",
            "3",
            "--grid-images",
            "2",
            "--out-dir",
            str(run),
            "--cache-dir",
            str(tmp_path / "cache"),
            "--wandb",
            "disabled",
            "--progress",
            "plain",
        ]
    )
    assert sorted(p.name for p in (run / "recon").glob("*.png")) == ["step_000003.png", "step_000006.png"]
    metrics = json.loads((run / "metrics.json").read_text())
    final = metrics["final"]
    assert final["psnr"] == pytest.approx(10 * torch.log10(torch.tensor(1 / final["mse01"])).item(), rel=1e-5)
    # shapes images are normalised with std 0.5 per channel: MSE on [0,1] pixels = 0.25 x normalised MSE
    assert final["mse01"] == pytest.approx(0.25 * final["mse"], rel=1e-4)
    assert result["history"][0]["loss"] > 0

    probe = tool("linear_probe").main(
        [
            "--checkpoint",
            str(run / "final"),
            "--train-size",
            "60",
            "--val-size",
            "30",
            "--test-size",
            "60",
            "--cache-dir",
            str(tmp_path / "cache"),
            "--out",
            str(tmp_path / "probe.json"),
        ]
    )
    assert probe["model_class"] == "CRATEMAE" and probe["chance"] == pytest.approx(1 / 6)
    for key in ("encoder", "random_init"):
        assert 0.0 <= probe[key]["test_acc"] <= 1.0 and probe[key]["feature_dim"] == 64
    assert json.loads((tmp_path / "probe.json").read_text())["pool"] == "cls"


def test_probe_tool_bad_checkpoint(tmp_path, tool):
    with pytest.raises(FileNotFoundError, match="not a directory"):
        tool("linear_probe").main(["--checkpoint", str(tmp_path / "nope")])
