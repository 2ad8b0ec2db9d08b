"""benchmarks/report.py without training: the run plan, bad input, and --compare."""

import importlib.util
import json
import sys
from pathlib import Path

import crate_core
import crate_mae  # noqa: F401  registers presets
import crate_text  # noqa: F401
import crate_vision  # noqa: F401
import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def report():
    spec = importlib.util.spec_from_file_location("crate_report", ROOT / "benchmarks" / "report.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses look their module up there
    spec.loader.exec_module(mod)
    yield mod
    del sys.modules[spec.name]


@pytest.mark.parametrize("preset", ["quick", "full"])
def test_plan_pairs_registered_models_with_equal_budgets(report, preset):
    runs = report.plan(report.PRESETS[preset], list(report.FAMILIES), {})
    assert {r.family for r in runs} == set(report.FAMILIES)
    for fam in report.FAMILIES:
        crate, base = [r for r in runs if r.family == fam]
        assert (crate.role, base.role) == ("crate", "baseline")
        assert (ROOT / crate.tool).is_file() and (ROOT / base.tool).is_file()
        budget = lambda r: [a for a in r.args if a not in ("--model", "--like", crate.model, base.model)]  # noqa: E731
        assert budget(crate) == budget(base), fam  # identical steps, batch, lr, extra flags
        assert "--layerwise-every" in crate.args
        crate_core.get_config(crate.model)  # raises on an unknown name
        crate_core.get_config(base.model)  # baselines are registered at import, gpt2-like-* included


def test_plan_passes_data_paths_and_extra_flags(report):
    runs = report.plan(report.PRESETS["quick"], ["gpt"], {"gpt": "data/mine"})
    for r in runs:
        assert r.args[r.args.index("--data") + 1] == "data/mine"
        assert r.args[r.args.index("--eval-every") + 1] == "0"


def test_bad_input_is_refused_with_a_clear_error(report, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(report, "REPORTS", tmp_path)
    for argv, needle in [
        (["--preset", "huge"], "unknown preset 'huge'"),
        (["--only", "audio"], "unknown family ['audio']"),
        (["--text-data", str(tmp_path / "missing")], "no such file or directory"),
        (["--compare", str(tmp_path)], "no report.json there"),
    ]:
        with pytest.raises(SystemExit) as e:
            report.main(argv)
        assert e.value.code == 2
        assert needle in capsys.readouterr().err
    old = tmp_path / "quick"
    old.mkdir()
    (old / "report.md").write_text("an older report")
    with pytest.raises(SystemExit):
        report.main([])
    assert "already exists" in capsys.readouterr().err
    assert (old / "report.md").read_text() == "an older report"  # nothing destroyed


def test_compare_sets_two_reports_side_by_side(report, tmp_path):
    def fake(name, acc, tput):
        d = tmp_path / name
        d.mkdir()
        rep = {
            "env": {"commit": "abc", "device": "CPU"},
            "results": {"vision": {"crate": {"model": "m", "metrics": {"test/top1": acc}, "layerwise": []}}},
            "speed": [{"model": "m", "train_per_s": tput, "infer_per_s": 1.0, "peak_mem_mb": 1.0}],
        }
        (d / "report.json").write_text(json.dumps(rep))
        return d

    text = report.compare(fake("new", 0.9, 300.0), fake("old", 0.6, 100.0))
    rows = {line.split("|")[1].strip(): line for line in text.splitlines() if line.startswith("| ")}
    acc_row = next(v for k, v in rows.items() if "top1" in k)
    assert "0.6" in acc_row and "0.9" in acc_row and "1.500" in acc_row
    tput_row = next(v for k, v in rows.items() if "train_per_s" in k)
    assert "3.000" in tput_row
