"""benchmarks/report.py without training: the run plan, bad input, --compare, floors, verdicts, live
progress, relative paths, and the --checkpoint mode on small random checkpoints in each official layout."""

import importlib.util
import json
import math
import subprocess
import sys
from pathlib import Path

import crate_core
import crate_mae  # noqa: F401  registers presets
import crate_text  # noqa: F401
import crate_vision  # noqa: F401
import pytest

from benchmarks import report as report_module
from benchmarks.reporting import floors as rf
from benchmarks.reporting import progress as rp
from benchmarks.reporting import render as rr
from benchmarks.reporting import verdicts as rv

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def report():
    return report_module


@pytest.mark.parametrize("preset", ["quick", "full"])
def test_plan_pairs_registered_models_with_equal_budgets(report, preset):
    runs = report.plan(report.PRESETS[preset], list(report.FAMILIES), {})
    assert {r.family for r in runs} == set(report.FAMILIES)
    for fam in report.FAMILIES:
        family = [r for r in runs if r.family == fam]
        roles = [r.role for r in family]
        assert roles == (["crate", "cbt", "baseline"] if fam == "vision" else ["crate", "baseline"]), fam
        models = {r.model for r in family}
        budget = lambda r, models=models: [a for a in r.args if a not in models]  # noqa: E731
        for r in family:
            assert (ROOT / r.tool).is_file()
            assert budget(r) == budget(family[0]), fam  # identical steps, batch, lr, extra flags
            assert "--layerwise-every" in r.args
            crate_core.get_config(r.model)  # raises on an unknown name; baselines are registered at import


def test_cbt_row_differs_from_crate_only_in_its_attention():
    """The report's CBT model is crate-mini-shapes with the CBSA block: same width, depth, heads, patch and
    patch embedding, a representatives' grid that fits its 4 x 4 patch grid."""
    crate, cbt = crate_core.get_config("crate-mini-shapes"), crate_core.get_config("cbt-mini-shapes")
    differ = {k for k in vars(crate) if getattr(crate, k) != getattr(cbt, k)}
    assert differ == {"block", "rep_grid"} and (cbt.block, cbt.rep_grid) == ("cbsa", 2)


def test_ssl_family_trains_with_pretrain_ssl_flags_and_evaluates_knn(report):
    """The self-supervised runs parse with tools/pretrain_ssl.py's parser (SimDINO, no in-training evaluation)."""
    from crate_core.train import train_config_from_args

    for run in report.plan(report.PRESETS["quick"], ["ssl"], {}):
        parsed = _tool_parser("pretrain_ssl").parse_args(run.args)
        assert parsed.method == "simdino" and parsed.model == run.model
        assert train_config_from_args(parsed).eval_every == 0
        # the quick preset's SimDINO settings reach the tool (README's self-supervised section measures them)
        assert (parsed.local_crops, parsed.momentum_teacher, parsed.color_jitter, parsed.blur_sigma) == (
            0, 0.99, [0.8, 0.8, 0.8, 0.2], [0.6, 1.6])
    assert report.PRESETS["quick"]["ssl"]["knn_test"] >= 1000  # the k-NN's binomial noise stays near 1%


def test_vision_data_reaches_the_ssl_runs_and_their_knn(report):
    """--vision-data is the ssl family's pretraining data and its k-NN's (training split as the bank, validation
    split held out); without it, the offline shapes at the preset's bank and test sizes."""
    spec = report.PRESETS["quick"]["ssl"]
    runs = report.plan(report.PRESETS["quick"], ["ssl"], {"ssl": "imagefolder:/data/imagenette"})
    assert runs and all(r.args[r.args.index("--data") + 1] == "imagefolder:/data/imagenette" for r in runs)
    assert report.knn_data_args(spec, "imagefolder:/data/imagenette") == [
        "--data", "imagefolder:/data/imagenette", "--train-split", "train", "--test-split", "val"]
    assert report.knn_data_args(spec, None) == report.knn_data_args(spec, "shapes") == [
        "--train-size", str(spec["knn_bank"]), "--test-size", str(spec["knn_test"])]
    parser = _tool_parser("eval_knn")
    parser.parse_args(["x/final", *report.knn_data_args(spec, "imagefolder:/data/imagenette")])


def test_plan_passes_data_paths_and_extra_flags(report):
    runs = report.plan(report.PRESETS["quick"], ["gpt"], {"gpt": "data/mine"})
    for r in runs:
        assert r.args[r.args.index("--data") + 1] == "data/mine"
        assert r.args[r.args.index("--eval-every") + 1] == "0"
    mae = report.plan(report.PRESETS["quick"], ["mae"], {})  # the preset's own data unless --mae-data says otherwise
    assert all(r.args[r.args.index("--data") + 1] == report.PRESETS["quick"]["mae"]["data"] for r in mae)
    mae = report.plan(report.PRESETS["quick"], ["mae"], {"mae": "shapes"})
    assert all(r.args[r.args.index("--data") + 1] == "shapes" for r in mae)


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


def test_bert_flags_are_the_char_lm_flags_by_name_without_the_dropout_override(report):
    """BERT trains on nanoGPT's character-level schedule (min lr, warm-up, weight decay, betas, clipping) with
    its own dropout: every CHAR_LM flag but --set, then its context and evaluation batches."""
    assert report.flags(min_lr="1e-4", betas=(0.9, 0.99), set=None, eval_every=0) == [
        "--min-lr", "1e-4", "--betas", "0.9", "0.99", "--eval-every", "0"]
    bert = report.plan(report.PRESETS["quick"], ["bert"], {})[0]
    gpt = report.plan(report.PRESETS["quick"], ["gpt"], {})[0]
    for run in (bert, gpt):
        args = run.args
        value = lambda flag, args=args: args[args.index(flag) + 1]  # noqa: E731
        assert value("--tokenizer") == report.CHAR_DATA and value("--min-lr") == "1e-4"
        assert value("--warmup-steps") == "100" and value("--weight-decay") == "0.1"
        assert args[args.index("--betas") + 1 : args.index("--betas") + 3] == ["0.9", "0.99"]
        assert value("--grad-clip") == "1.0" and value("--eval-every") == "0"
    assert "--set" not in bert.args and gpt.args[gpt.args.index("--set") + 1] == "dropout=0"
    assert bert.args[bert.args.index("--max-positions") + 1] == "66"
    assert bert.args[bert.args.index("--eval-batches") + 1] == "100"
    assert report.plan(report.PRESETS["smoke"], ["bert"], {})[0].args.count("--eval-batches") == 1
    from crate_core.train import train_config_from_args

    parsed = _tool_parser("pretrain_bert").parse_args(bert.args)  # the tool accepts every flag
    cfg = train_config_from_args(parsed)
    assert (cfg.min_lr, cfg.warmup_steps, cfg.weight_decay, tuple(cfg.betas), cfg.grad_clip) == (
        1e-4, 100, 0.1, (0.9, 0.99), 1.0)


def _tool_parser(name):
    """The argument parser of tools/NAME.py, loaded from its file (tools/ is not a package)."""
    spec = importlib.util.spec_from_file_location(f"tool_{name}", ROOT / "tools" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.build_parser()


def test_report_runs_as_a_module_and_as_a_script():
    """`python -m benchmarks.report` and `python benchmarks/report.py` (README's command) both start."""
    for cmd in ([sys.executable, "-m", "benchmarks.report", "--help"], [sys.executable, "benchmarks/report.py", "--help"]):
        proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, proc.stderr
        assert "--preset" in proc.stdout


# ---- floors, verdicts, progress, checkpoint mode ----------------------------------------------
def test_seeds_repeat_every_run_with_its_own_seed(report):
    runs = report.plan(report.PRESETS["quick"], ["vision", "gpt"], {}, seeds=2)
    assert len(runs) == 10 and len({r.label for r in runs}) == 10  # vision: CRATE, CBT, ViT; gpt: CRATE, GPT
    for r in runs:
        assert r.args[r.args.index("--seed") + 1] == str(r.seed)
    gpt = [r for r in runs if r.family == "gpt"]
    assert all(r.args[r.args.index("--data") + 1] == report.CHAR_DATA for r in gpt)


def test_resumed_report_continues_interrupted_runs_from_their_checkpoints(report, tmp_path):
    """The trainer refuses a folder holding checkpoints unless told --resume; a resumed report tells it."""
    run = report.plan(report.PRESETS["smoke"], ["gpt"], {})[0]
    fresh = report.child_command(run, tmp_path / run.label, resume=False)
    resumed = report.child_command(run, tmp_path / run.label, resume=True)
    assert "--resume" not in fresh and fresh[fresh.index("--out-dir") + 1] == str(tmp_path / run.label)
    assert resumed[:len(fresh)] == fresh and resumed[len(fresh):] == ["--resume", "auto"]
    from crate_core.train import train_config_from_args

    parser = _tool_parser("pretrain_gpt")
    assert train_config_from_args(parser.parse_args(resumed[2:])).resume == "auto"


def test_bad_seeds_and_checkpoints_fail_before_any_work(report, tmp_path, monkeypatch, capsys):
    import torch

    monkeypatch.setattr(report, "REPORTS", tmp_path)
    junk = tmp_path / "junk.pt"
    torch.save({"state_dict": {"foo.weight": torch.zeros(2)}}, junk)
    for argv, needle in [
        (["--seeds", "0"], "--seeds must be at least 1"),
        (["--checkpoint", f"audio={junk}"], "unknown family 'audio'"),
        (["--checkpoint", f"vision={tmp_path / 'nope.pth'}"], "no such file or directory"),
        (["--checkpoint", f"vision={junk}"], "cls_token, pos_embedding"),  # the expected keys are listed
        (["--checkpoint", f"gpt={junk}"], "transformer.h.{l}.ista.weight"),
        (["--checkpoint", f"mae={tmp_path}"], "must be a project export"),
    ]:
        with pytest.raises(SystemExit) as e:
            report.main(argv)
        assert e.value.code == 2
        assert needle in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["junk.pt"]  # no report directory was started


def test_unigram_and_classification_floors_match_direct_formulas(tmp_path):
    import math

    import numpy as np
    from crate_text import get_tokenizer, write_tokens
    from crate_text.tokenizers import save_char_vocab

    save_char_vocab(tmp_path, "abc")
    tok = get_tokenizer(tmp_path)
    train, val = [0, 0, 0, 1, 2, 3], [0, 1, 1, 3]  # 3 = end-of-text (special)
    write_tokens(tmp_path / "train.bin", train, tok.name, tok.n_ids)
    write_tokens(tmp_path / "val.bin", val, tok.name, tok.n_ids)
    f = rf.unigram_floor(tmp_path, tok)
    counts = np.bincount(train, minlength=tok.n_ids) + 1.0  # add-one over all n_ids rows
    p = counts / counts.sum()
    assert math.isclose(f["unigram_ce"], -np.mean([math.log(p[i]) for i in val]), rel_tol=1e-12)
    assert math.isclose(f["mlm_mode_acc"], 1 / 3)  # 'a' among the maskable val ids a, b, b
    c = rf.classification_floor([0, 1, 1, 1, 2], 4)
    assert c == {"chance": 0.25, "majority": 0.6, "n": 5}


def test_mae_floor_is_the_mean_colour_psnr_of_the_masked_patches():
    import crate_core
    import torch
    from crate_mae.data import load_split

    torch.manual_seed(0)
    model = crate_core.create("crate-mae-nano").eval()
    f = rf.mae_floor(model, "shapes", eval_size=8, batch=8, cache_dir=None)
    val = load_split("shapes", "val", 8, 32)
    x = torch.stack([val.dataset[i][0] for i in range(8)])
    pix = x * torch.tensor(val.std).view(1, 3, 1, 1) + torch.tensor(val.mean).view(1, 3, 1, 1)
    noise = torch.rand(8, model.num_patches, generator=torch.Generator().manual_seed(0))
    mask = model(x, noise=noise).mask.bool()  # (8, 64) over the 8 x 8 grid of 4 x 4 patches
    err = []
    for b in range(8):
        colour = pix[b].mean(dim=(1, 2))
        for n in torch.nonzero(mask[b]).flatten().tolist():
            i, j = divmod(n, 8)
            patch = pix[b, :, 4 * i : 4 * i + 4, 4 * j : 4 * j + 4]
            err.append(float((patch - colour.view(3, 1, 1)).pow(2).mean()))
    mse = sum(err) / len(err)
    assert abs(f["mean_colour_mse01"] - mse) < 1e-6 and abs(f["mean_colour_psnr"] + 10 * math.log10(mse)) < 1e-4


def record(step, per_layer):
    return {"step": step, "layers": {"trunk": {m: v for m, v in per_layer.items()}}}


def test_verdicts_follow_the_stated_rule():
    import numpy as np

    means, stds = [4.0, 3.0, 2.5, 1.0], [0.5, 0.5, 1.0, 1.0]
    b, se = rv.slope(means, stds, batch=16)
    assert math.isclose(b, np.polyfit([1, 2, 3, 4], means, 1)[0], rel_tol=1e-12)
    w = (np.arange(1, 5) - 2.5) / 5.0
    assert math.isclose(se, math.sqrt(np.sum(w**2 * np.square(stds)) / 16), rel_tol=1e-12)
    assert rv.decide([b], [se], -1)["verdict"] == "holds"
    assert rv.decide([b], [se], +1)["verdict"] == "does not hold"
    assert rv.decide([0.1], [0.1], -1)["verdict"] == "within noise"  # 1 noise unit < 2
    # over seeds: a mean of 1.0 with seed std 1.0 over 3 seeds has noise sqrt(0 + 1/3): 1.0 < 2 * 0.577
    d = rv.decide([0.0, 1.0, 2.0], [0.0, 0.0, 0.0], +1)
    assert math.isclose(d["noise"], math.sqrt(1 / 3)) and d["verdict"] == "within noise"
    flat = [[0.5, 0.01]] * 3
    rising = [[0.4, 0.01], [0.5, 0.01], [0.6, 0.01]]
    rc_down = [[30.0, 1.0], [20.0, 1.0], [10.0, 1.0]]
    recs = [record(0, {"rc": rc_down, "sparsity": flat}), record(100, {"rc": rc_down, "sparsity": rising})]
    v = rv.claim_verdicts([recs], batch=8)["trunk"]
    assert v["rc"]["depth"]["verdict"] == "holds" and v["rc"]["training"]["verdict"] == "within noise"
    assert v["sparsity"]["depth"]["verdict"] == "holds" and v["sparsity"]["right_steps"] == [2]
    assert "**holds**" in "\n".join(rv.verdict_lines("vision", {"trunk": v}))


def test_knn_floor_verdict_is_the_stated_binomial_rule():
    """d = acc - floor against sqrt(acc (1 - acc) / n + floor (1 - floor) / n), 2 units either way."""
    n = 2000
    se = math.sqrt((0.4 * 0.6 + 0.3 * 0.7) / n)
    v = rv.above_floor(0.4, 0.3, n)
    assert math.isclose(v["se"], se, rel_tol=1e-12) and math.isclose(v["difference"], 0.1, rel_tol=1e-12)
    assert v["verdict"] == "holds"
    assert rv.above_floor(0.3, 0.3 + 1.5 * se, n)["verdict"] == "within noise"
    assert rv.above_floor(0.2, 0.3, n)["verdict"] == "does not hold"
    rows = rv.floor_verdict_lines(0.4, {"knn_raw_pixels": 0.3, "knn_at_init": 0.39, "n": n})
    assert "**holds**" in rows[2] and "**within noise**" in rows[3]


def test_progress_lines_and_full_child_log(tmp_path):
    import io

    script = "import time\nfor s in (5, 10):\n    print(f'step {s} | loss {3.0 / s:.4f} | lr 1e-3', flush=True)\nprint('done')\n"
    job = rp.Job("gpt-crate", [sys.executable, "-c", script], tmp_path / "gpt-crate" / "log.txt", steps=10,
                 family="gpt-crate")
    later = rp.Job("gpt-baseline", [sys.executable, "-c", "print('x')"], tmp_path / "b" / "log.txt", steps=10,
                   family="gpt-crate")
    out = io.StringIO()
    prog = rp.Progress([job, later], stream=out, live=False, print_every_s=0.0)
    prog.run(job)
    text = out.getvalue()
    assert "[report 1/2] gpt-crate: step 5/10, loss 0.6000" in text and "ETA" in text and "left" in text
    assert "step 10/10, loss 0.3000" in text and "done in" in text
    assert job.log.read_text().splitlines()[-1] == "done"  # the child's whole output is kept
    assert prog.expected(later) == prog.rate["gpt-crate"] * 10  # the next run of the family is timed from this one
    bad = rp.Job("bad", [sys.executable, "-c", "import sys; print('boom'); sys.exit(3)"], tmp_path / "x" / "log.txt")
    with pytest.raises(RuntimeError, match="boom"):
        rp.Progress([bad], stream=io.StringIO(), live=False).run(bad)


def test_eta_counts_from_the_first_logged_step_not_from_start_up():
    pace = rp.Pace()
    assert pace.eta(200, 5.0, fallback=42.0) == 42.0  # nothing logged yet
    pace.see(1, 10.0)  # step 1 after 10 s of start-up
    assert pace.eta(200, 10.0, fallback=42.0) == 42.0  # one step: no rate yet
    pace.see(101, 20.0)  # then 100 steps in 10 s
    assert pace.eta(201, 20.0, fallback=42.0) == pytest.approx(10.0)


def test_time_left_when_the_runs_start_longest_first(tmp_path):
    """The report starts the longest runs first, out of plan order: the time left list-schedules every pending
    run onto the slots once and adds only the one-at-a-time jobs after the runs (here 100 + 5 s)."""
    import io
    import time

    short = rp.Job("short", [], tmp_path / "a", steps=10, family="a", prior_s=10)
    long = rp.Job("long", [], tmp_path / "b", steps=10, family="b", prior_s=100)
    after = rp.Job("segment", [], tmp_path / "c", prior_s=5)
    prog = rp.Progress([short, long, after], stream=io.StringIO(), live=False)
    line = rp._many_status(prog, [], [long, short], 2, time.perf_counter())
    assert line.endswith("~1m45s left"), line


def test_runs_side_by_side_share_the_cores_and_keep_their_logs(tmp_path):
    import io
    import time

    script = ("import os, time\nprint('threads', os.environ['OMP_NUM_THREADS'], flush=True)\n"
              "for s in (1, 2, 3):\n    time.sleep(0.4)\n    print(f'step {s} | loss {1 / s:.4f}', flush=True)\n")
    jobs = [rp.Job(f"run{i}", [sys.executable, "-c", script], tmp_path / f"run{i}" / "log.txt", steps=3,
                   family=f"f{i}") for i in range(3)]
    out = io.StringIO()
    prog = rp.Progress(jobs, stream=out, live=False, print_every_s=0.0)
    t = time.perf_counter()
    walls = rp.run_many(prog, jobs, slots=2)
    total = time.perf_counter() - t
    assert set(walls) == {"run0", "run1", "run2"}
    assert total < sum(walls.values()) - 0.5  # the first two ran at the same time
    text = out.getvalue()
    assert "2 side by side" in text and "run0: step" in text and "run1: step" in text and "left" in text
    for job in jobs:
        lines = job.log.read_text().splitlines()
        assert f"threads {rp.threads_per_slot(2)}" in lines and lines[-1] == "step 3 | loss 0.3333"
    slow = rp.Job("slow", [sys.executable, "-c", "import time; time.sleep(30)"], tmp_path / "s" / "log.txt")
    bad = rp.Job("bad", [sys.executable, "-c", "import sys; print('boom'); sys.exit(3)"], tmp_path / "x" / "log.txt")
    prog = rp.Progress([slow, bad], stream=io.StringIO(), live=False)
    t = time.perf_counter()
    with pytest.raises(RuntimeError, match="boom"):
        rp.run_many(prog, [slow, bad], slots=2)
    assert time.perf_counter() - t < 20  # the failure stopped the other run instead of waiting for it


def test_paths_are_made_relative_to_the_repository():
    obj = {"checkpoint": f"{ROOT}/benchmarks/reports/q/_work/x", "cmd": [f"python {ROOT}/tools/a.py"], "n": 3}
    assert rr.relativize(obj, ROOT) == {"checkpoint": "benchmarks/reports/q/_work/x", "cmd": ["python tools/a.py"], "n": 3}


def official_files(tmp_path):
    """Small random checkpoints in each official layout (the converters' own test fixtures)."""
    import torch

    def fixture(rel):
        spec = importlib.util.spec_from_file_location(f"fx_{Path(rel).stem}", ROOT / rel)
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        return mod

    v = fixture("tests/vision/test_vision_convert.py")
    torch.save(v.wrap_official(v.official_crate_state()), tmp_path / "crate.pth")
    m = fixture("tests/mae/test_mae_convert.py")
    torch.save({"model": m.official_state_dict()}, tmp_path / "mae.pth")
    t = fixture("tests/text/test_text_convert.py")
    t.nanogpt_file(t.official_state("overcomplete", vocab=50304), tmp_path / "ckpt.pt")
    return tmp_path / "crate.pth", tmp_path / "mae.pth", tmp_path / "ckpt.pt"


def test_checkpoint_mode_measures_official_layouts(report, tmp_path, monkeypatch):
    monkeypatch.setattr(report, "REPORTS", tmp_path / "reports")
    vision, mae, gpt = official_files(tmp_path)
    argv = ["--checkpoint", f"vision={vision}", "--checkpoint", f"mae={mae}", "--checkpoint", f"gpt={gpt}",
            "--heads", "vision=4", "--heads", "mae=4", "--name", "real"]
    out = report.main(argv)
    md = (out / "report.md").read_text()
    for fam in ("vision", "mae", "gpt"):
        assert f"### {fam}: " in md
    assert md.count("with depth (after training)") >= 9 and "over training (layer mean)" not in md
    assert "overlay-" in md and "checkpoint-mae-recon.png" in md and "Most selective codes" in md
    for name in [line.split("(")[-1].rstrip(")") for line in md.splitlines() if line.startswith("![")]:
        assert (out / name).is_file(), name
    rep = json.loads((out / "report.json").read_text())
    assert str(ROOT) not in json.dumps(rep)
    assert rep["results"]["gpt"]["contexts"]["codes"]
    with pytest.raises(SystemExit):  # the same name again is refused without --overwrite
        report.main(argv)
