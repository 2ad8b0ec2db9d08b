"""The cross-modality report: CRATE vs the standard transformer in every family, each task beside
its trivial floor, and a verdict on each white-box claim (per-layer Rc and sparsity) from
measurements at initialisation, over training and after.

    uv run benchmarks/report.py                          # --preset quick, offline; 17-19 min on 2 CPU cores
    uv run benchmarks/report.py --preset full --name full-run --seeds 3
    uv run benchmarks/report.py --only vision gpt --vision-data imagefolder:/data/imagenette
    uv run benchmarks/report.py --compare benchmarks/reports/quick-reference   # numbers side by side
    uv run benchmarks/report.py --checkpoint vision=CRATE_base.pth --checkpoint gpt=runs/gpt/final --name real

Every family trains a CRATE model and its standard counterpart through the project's own tools
(tools/train_vision.py, pretrain_mae.py, pretrain_gpt.py, pretrain_bert.py, pretrain_ssl.py) with identical
budgets (steps, batch, learning rate, data), each with --layerwise-every so the trainer records the
per-layer measures (crate_core.probes) at step 0 and along training. The vision family adds CBT (CBSA
attention, the same width, depth and budget) as a second white-box model; the ssl family pretrains CRATE and
ViT with SimDINO and scores them with tools/eval_knn.py (k-NN beside its raw-pixel and at-initialisation
floors). Text runs on characters: tools/prepare_text.py --tokenizer char prepares data/shakespeare-char (a
90/10 split of the plays) first. Then tools/segment.py scores the emergent segmentation of the vision and
self-supervised models,
benchmarks/speed.py measures throughput and memory (full preset), and the floors (reporting/floors.py) and
verdicts (reporting/verdicts.py) are computed. With --checkpoint nothing is trained: the measurement half
runs on the given weights (reporting/checkpoints.py). Also ``python -m benchmarks.report``. Output: benchmarks/reports/<name>/report.md,
report.json and PNGs (paths relative to the repository); each child's full output is kept in
benchmarks/reports/<name>/_work/<run>/log.txt (git-ignored) while a live line shows its progress.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from benchmarks.harness import CHAR_DATA, FAMILIES, REPORTS, ROLES, ROOT, WHITE_BOX
from benchmarks.reporting.progress import Job, Progress, run_many, threads_per_slot
from benchmarks.reporting.render import compare, copy_overlays, relativize, write_report
from benchmarks.reporting.results import combine, floors


@dataclass
class Run:
    """One training run of one model through a project tool."""

    family: str
    role: str  # one of ROLES
    model: str
    tool: str
    args: list[str] = field(default_factory=list)
    seed: int = 0

    @property
    def label(self) -> str:
        return f"{self.family}-{self.role}" + (f"-s{self.seed}" if self.seed else "")


def flags(**named) -> list[str]:
    """Command-line flags from named values: ``min_lr="1e-4"`` -> ``--min-lr 1e-4``; a tuple gives the flag
    several values; None leaves the flag out (to drop one of a shared set by name)."""
    out = []
    for name, value in named.items():
        if value is None:
            continue
        values = value if isinstance(value, tuple) else (value,)
        out += ["--" + name.replace("_", "-"), *(str(v) for v in values)]
    return out


# nanoGPT's shakespeare_char CPU run (4 layers, 4 heads, width 128 = crate-gpt-nano's shape; context 64,
# batch 12, 2000 iterations, lr 1e-3 cosine to 1e-4 after 100 warm-up steps, AdamW betas 0.9/0.99,
# weight decay 0.1, clipping 1.0, no dropout), on characters; the tools' flags by name
CHAR_LM = dict(tokenizer=CHAR_DATA, min_lr="1e-4", warmup_steps=100, weight_decay=0.1, betas=(0.9, 0.99),
               grad_clip=1.0, set="dropout=0", eval_every=0)
CHAR_BERT = {**CHAR_LM, "set": None}  # the same schedule with BERT's own dropout
# SimDINO on the offline shapes, CRATE vs ViT, 800 steps of 64 images, set for 32 px and a few CPU minutes
# (measured, README's self-supervised section): the 2 global crops only (4 local crops cost 1.5x per step and
# gave no better k-NN), teacher momentum 0.99 (DINO's 0.996 is for ~10^5 steps; at 300 it left the teacher near
# its initialisation), SimCLR-strength colour jitter, and a blur of 0.6-1.6 px (DINO's 0.1-2 px at 224 px,
# scaled to 32 px, blurs nothing). 1,500 steps (k-NN 25.7% vs raw pixels 28.1%) took the report to 22 minutes.
# The crops are drawn per batch in the training process (pretrain_ssl --crops auto = batch; a worker process
# would compete with the other run for the 2 cores); k-NN on a labelled bank and held-out set of knn_bank /
# knn_test shapes (tools/eval_knn.py)
SSL_QUICK = dict(crate="crate-mini-shapes", baseline="vit-mini-shapes", steps=800, micro_batch=64, lr=1e-3,
                 extra=dict(method="simdino", eval_every=0, num_workers=0, local_crops=0, momentum_teacher=0.99,
                            color_jitter=(0.8, 0.8, 0.8, 0.2), blur_sigma=(0.6, 1.6)),
                 knn_bank=2000, knn_test=2000, prior_s=dict(crate=120, baseline=210))
# Per preset: the shared budget of each family and the model pairs. Budgets are equal within a family;
# "extra" holds the tools' further flags by name (see flags). prior_s: expected wall seconds of one run on 2 CPU
# cores, or of each role's run (the progress line's first ETA; the runs start longest first).
PRESETS = {
    "quick": {
        "vision": dict(crate="crate-mini-shapes", cbt="cbt-mini-shapes", baseline="vit-mini-shapes", steps=3300,
                       micro_batch=128, lr=2e-3, extra=dict(eval_every=0, train_size=20000),
                       prior_s=dict(crate=270, cbt=290, baseline=520)),
        "mae": dict(crate="crate-mae-nano", baseline="vit-mae-nano", steps=1200, micro_batch=32, lr=1e-3,
                    data="mnist", extra=dict(eval_every=0), prior_s=dict(crate=120, baseline=185)),
        "gpt": dict(crate="crate-gpt-nano", baseline="gpt2-like-crate-gpt-nano", steps=2000, micro_batch=12, lr=1e-3,
                    extra=dict(CHAR_LM, block_size=64, eval_batches=200), prior_s=dict(crate=45, baseline=180)),
        "bert": dict(crate="crate-bert-nano", baseline="bert-like-crate-bert-nano", steps=600, micro_batch=12,
                     lr=1e-3, extra=dict(CHAR_BERT, max_positions=66, eval_batches=100),
                     prior_s=dict(crate=50, baseline=80)),
        "ssl": SSL_QUICK,
        "layerwise_points": 4,
        "segment_images": 300,
        # no benchmarks/speed.py phase in the quick preset (time): the training runs' own throughput is shown
        "speed": None,
    },
    "full": {
        "vision": dict(crate="crate-mini-shapes", cbt="cbt-mini-shapes", baseline="vit-mini-shapes", steps=9000,
                       micro_batch=128, lr=2e-3, extra=dict(eval_every=0), prior_s=600),
        "mae": dict(crate="crate-mae-nano", baseline="vit-mae-nano", steps=3000, micro_batch=128, lr=1.5e-3,
                    prior_s=900),
        "gpt": dict(crate="crate-gpt-nano", baseline="gpt2-like-crate-gpt-nano", steps=5000, micro_batch=64,
                    lr=1e-3, extra=dict(CHAR_LM, block_size=256, eval_batches=200), prior_s=1800),
        "bert": dict(crate="crate-bert-nano", baseline="bert-like-crate-bert-nano", steps=5000, micro_batch=64,
                     lr=1e-3, extra=dict(tokenizer=CHAR_DATA, eval_every=0, eval_batches=100), prior_s=1800),
        "ssl": {**SSL_QUICK, "steps": 3000, "prior_s": 1200},
        "layerwise_points": 8,
        "segment_images": 1000,
        "speed": ["--preset", "quick", "--batch", "32", "--repeats", "10"],
    },
}
# smoke: the quick preset's flags at a few steps, to check the whole pipeline end to end (~5 min)
PRESETS["smoke"] = {
    **{fam: {**PRESETS["quick"][fam], "steps": 8, "prior_s": 20,
             "extra": {**PRESETS["quick"][fam].get("extra", {}), "eval_batches": 2}} for fam in FAMILIES},
    "layerwise_points": 2, "segment_images": 20,
    "speed": ["--models", "crate-gpt-nano", "gpt2-like-crate-gpt-nano", "--batch", "2", "--seq", "32", "--repeats", "1"],
}
PRESETS["smoke"]["ssl"].update(knn_bank=120, knn_test=60)
DEFAULT_DATA = {"gpt": CHAR_DATA, "bert": CHAR_DATA}


def plan(preset: dict, families: list[str], data: dict[str, str | None], seeds: int = 1) -> list[Run]:
    runs = []
    for seed in range(seeds):
        for fam in families:
            spec = preset[fam]
            every = max(1, spec["steps"] // preset["layerwise_points"])
            common = [
                "--steps", str(spec["steps"]), "--micro-batch", str(spec["micro_batch"]), "--lr", str(spec["lr"]),
                "--layerwise-every", str(every), "--wandb", "disabled", "--progress", "plain", "--seed", str(seed),
            ]
            extra = dict(spec.get("extra", {}))
            if data.get(fam) and "tokenizer" in extra:  # a character-level directory decodes with its own table
                extra["tokenizer"] = data[fam]
            common += flags(**extra)
            source = data.get(fam) or spec.get("data") or DEFAULT_DATA.get(fam)
            if source:
                common += ["--data", source]
            tool = FAMILIES[fam].tool
            for role in ROLES:
                if spec.get(role):  # a family without a second white-box model has no "cbt"
                    runs.append(Run(fam, role, spec[role], tool, ["--model", spec[role], *common], seed))
    return runs


def child_command(run: Run, run_dir: Path, resume: bool) -> list[str]:
    """The training process of one run; with the report's --resume an interrupted run continues from its
    newest checkpoint (``--resume auto``: a fresh start when it has none)."""
    cmd = [sys.executable, run.tool, *run.args, "--out-dir", str(run_dir)]
    return cmd + ["--resume", "auto"] if resume else cmd


def read_layerwise(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def environment() -> dict:
    import torch

    cpu = "unknown"
    try:
        cpu = next(l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name"))
    except (OSError, StopIteration):
        cpu = platform.processor() or cpu
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True)
    dirty = subprocess.run(["git", "status", "--porcelain", "--", ".", ":!benchmarks/reports"], cwd=ROOT,
                           capture_output=True, text=True)  # a report replacing a committed one is not a change
    return {
        "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else f"CPU: {cpu}",
        "cpu_cores": __import__("os").cpu_count(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "commit": (commit.stdout.strip() or "unknown") + (" (dirty)" if dirty.stdout.strip() else ""),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "load_avg_1m": round(os.getloadavg()[0], 2),  # other work on the machine at the start
    }


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="quick", help=f"one of {sorted(PRESETS)}")
    p.add_argument("--name", default=None, help="report directory name (default: the preset, or 'checkpoints')")
    p.add_argument("--only", nargs="*", default=None, help=f"families to run, of {list(FAMILIES)}")
    p.add_argument("--seeds", type=int, default=1, help="repeat every training run with seeds 0..N-1")
    p.add_argument("--checkpoint", action="append", default=[], metavar="FAMILY=PATH",
                   help="measure given weights instead of training (vision, mae, gpt; repeatable): an official "
                        "checkpoint file or a project export directory")
    p.add_argument("--heads", action="append", default=[], metavar="FAMILY=K",
                   help="head count of an official --checkpoint whose width matches no official preset")
    p.add_argument("--overwrite", action="store_true", help="replace an existing report of the same name")
    p.add_argument("--resume", action="store_true", help="continue an interrupted report: finished runs are reused")
    p.add_argument("--compare", type=Path, default=None, help="an older report directory to set side by side")
    p.add_argument("--vision-data", default=None,
                   help="tools/train_vision.py and tools/pretrain_ssl.py --data, and the ssl family's k-NN data "
                        "(default: offline shapes)")
    p.add_argument("--mae-data", default=None,
                   help="tools/pretrain_mae.py --data (default: the preset's, offline MNIST in quick)")
    p.add_argument("--text-data", default=None,
                   help=f"prepared character-level token directory for gpt and bert (default: {CHAR_DATA})")
    p.add_argument("--note", default=None, help="a line for report.md's header (e.g. the machine was shared)")
    p.add_argument("--parallel", type=int, default=min(2, os.cpu_count() or 1),
                   help="training runs side by side, each with cpu_count/N threads (default: 2, or 1 on one core)")
    p.add_argument("--no-speed", action="store_true")
    p.add_argument("--no-segment", action="store_true")
    return p


def main(argv: list[str] | None = None) -> Path:
    p = build_parser()
    args = p.parse_args(argv)
    if args.preset not in PRESETS:
        p.error(f"unknown preset {args.preset!r}; choose one of {sorted(PRESETS)}")
    families = args.only or list(FAMILIES)
    bad = [f for f in families if f not in FAMILIES]
    if bad:
        p.error(f"unknown family {bad}; choose from {list(FAMILIES)}")
    if args.seeds < 1:
        p.error(f"--seeds must be at least 1, got {args.seeds}")
    if args.parallel < 1:
        p.error(f"--parallel must be at least 1, got {args.parallel}")
    from crate_core.recipe import OFFLINE_FORMATS

    for flag, path in (("--vision-data", args.vision_data), ("--mae-data", args.mae_data), ("--text-data", args.text_data)):
        offline = flag != "--text-data" and path in OFFLINE_FORMATS  # the image sets that ship offline
        if path and not offline and ":" not in path and not Path(path).expanduser().exists():
            p.error(f"{flag} {path}: no such file or directory")
    if args.compare and not (args.compare / "report.json").is_file():
        p.error(f"--compare {args.compare}: no report.json there")
    if args.heads and not args.checkpoint:
        p.error("--heads only applies to --checkpoint files")
    models = {}
    if args.checkpoint:
        from benchmarks.reporting import checkpoints as rc

        try:
            specs = rc.parse_specs(args.checkpoint)
            heads = rc.parse_heads(args.heads, specs)
            models = {fam: rc.load(fam, path, heads.get(fam)) for fam, path in specs.items()}  # errors before work
        except (ValueError, FileNotFoundError) as e:
            p.error(str(e))
    out = REPORTS / (args.name or ("checkpoints" if models else args.preset))
    if out.exists() and not args.resume:
        if not args.overwrite:
            p.error(f"report directory {out.relative_to(ROOT) if out.is_relative_to(ROOT) else out} already "
                    "exists; pass --overwrite to replace it, --resume to continue it, or --name NEW")
        shutil.rmtree(out)
    work = out / "_work"
    work.mkdir(parents=True, exist_ok=True)
    if models:
        from benchmarks.reporting.checkpoint_run import run_checkpoints

        return run_checkpoints(out, models, specs, environment(), args.note, heads)
    return run_training(args, families, out, work)


def rel(path: Path | str) -> str:
    path = Path(path)
    return str(path.relative_to(ROOT)) if path.is_absolute() and path.is_relative_to(ROOT) else str(path)


def run_training(args, families: list[str], out: Path, work: Path) -> Path:
    preset = PRESETS[args.preset]
    data = {"vision": args.vision_data, "mae": args.mae_data, "gpt": args.text_data, "bert": args.text_data,
            "ssl": args.vision_data}
    data = {fam: path or preset.get(fam, {}).get("data") for fam, path in data.items()}  # a preset's own data
    env = {**environment(), "parallel_runs": args.parallel, "threads_per_run": threads_per_slot(args.parallel)}
    t0 = time.perf_counter()
    cmds: list[str] = []
    results: dict = {"_reused": 0, "_reused_s": 0.0, "_phase_s": {}, "_seeds": args.seeds}
    runs = plan(preset, families, data, args.seeds)
    jobs: list[Job] = []
    text = [f for f in ("gpt", "bert") if f in families]
    if text and not args.text_data:  # the character-level corpus, prepared once (a no-op when it is there)
        prep = ["tools/prepare_text.py", "--tokenizer", "char", "--val-fraction", "0.1", "--out", CHAR_DATA]
        jobs.append(Job("prepare-text", [sys.executable, *prep, "--num-proc", "1"], work / "prepare-text" / "log.txt",
                        prior_s=25))
        cmds.append("uv run " + " ".join(prep))
    by_job = {}
    for run in runs:
        run_dir = work / run.label
        cmd = child_command(run, run_dir, args.resume)
        cmds.append(" ".join(["uv run", run.tool, *run.args, "--out-dir", rel(run_dir)]))
        spec = preset[run.family]
        prior = spec["prior_s"][run.role] if isinstance(spec["prior_s"], dict) else spec["prior_s"]
        job = Job(run.label, cmd, run_dir / "log.txt", spec["steps"], f"{run.family}-{run.role}", prior)
        jobs.append(job)
        by_job[run.label] = run
    if "ssl" in families:
        jobs.append(Job("knn", [], work / "knn" / "log.txt", prior_s=30))
    drawn = [r for r in runs if r.family in ("vision", "ssl") and r.seed == 0]  # the models tools/segment.py scores
    segment = bool(drawn) and not args.no_segment
    if segment:
        jobs.append(Job("segment", [], work / "segment" / "log.txt", prior_s=10 + 8 * len(drawn)))
        jobs += [Job(f"overlays-{r.label}", [], work / f"overlays-{r.label}" / "log.txt", prior_s=10)
                 for r in drawn if r.role in WHITE_BOX]
    if preset["speed"] and not args.no_speed:
        jobs.append(Job("speed", [], work / "speed" / "log.txt", prior_s=80))
    progress = Progress(jobs, slots=args.parallel)
    for job in jobs:
        if job.name == "prepare-text":
            progress.run(job)
    walls, to_run = {}, []
    for job in (j for j in jobs if j.name in by_job):
        run_dir = work / by_job[job.name].label
        if args.resume and (run_dir / "train_result.json").is_file() and (run_dir / "final").is_dir():
            print(f"[report] {job.name}: reusing the finished run in {rel(run_dir)}", flush=True)
            walls[job.name] = float(json.loads((run_dir / "train_result.json").read_text()).get("time_s", 0.0))
            results["_reused"] += 1
            results["_reused_s"] += walls[job.name]
        else:
            to_run.append(job)
    to_run.sort(key=lambda job: -job.prior_s)  # longest first: the side-by-side slots finish closer together
    walls.update(run_many(progress, to_run, args.parallel))
    entries: dict = {}
    for job in (j for j in jobs if j.name in by_job):
        run, dt = by_job[job.name], walls[job.name]
        run_dir = work / run.label
        metrics = {}
        for name in ("train_result.json", "metrics.json"):  # the trainer's figures, then the tool's own
            if (run_dir / name).is_file():
                metrics.update(json.loads((run_dir / name).read_text()))
        entry = {"model": run.model, "seed": run.seed, "metrics": metrics, "wall_s": dt,
                 "layerwise": read_layerwise(run_dir / "layerwise.jsonl"), "dir": rel(run_dir)}
        entries.setdefault((run.family, run.role), []).append(entry)
    results["_phase_s"]["training runs"] = time.perf_counter() - t0
    knn = None
    if "ssl" in families:
        t_phase = time.perf_counter()
        knn = knn_phase(progress, next(j for j in jobs if j.name == "knn"), preset["ssl"], by_job, work, cmds,
                        data.get("ssl"))
        for (fam, role), seeds in entries.items():
            for entry in seeds if fam == "ssl" else []:
                entry["metrics"]["knn/top1"] = knn[(role, entry["seed"])]["top1"]
        knn = {role: r for (role, seed), r in knn.items() if seed == 0}
        results["_phase_s"]["k-NN evaluation"] = time.perf_counter() - t_phase
    for (fam, role), seeds in entries.items():
        results.setdefault(fam, {})[role] = combine(fam, role, seeds, preset, out)
    floors(results, families, preset, data, knn)

    t_phase = time.perf_counter()
    seg = None
    if segment:
        seg = segmentation(progress, jobs, drawn, work, preset, cmds, out, results)
        results["_phase_s"]["segmentation"] = time.perf_counter() - t_phase
    t_phase = time.perf_counter()
    speed = None
    if preset["speed"] and not args.no_speed:
        speed_out = work / "speed"
        job = next(j for j in jobs if j.name == "speed")
        job.cmd = [sys.executable, "benchmarks/speed.py", *preset["speed"], "--out", str(speed_out / "speed")]
        cmds.append("uv run benchmarks/speed.py " + " ".join(preset["speed"]) + f" --out {rel(speed_out / 'speed')}")
        progress.run(job)
        speed = json.loads((speed_out / "speed.json").read_text())
        results["_phase_s"]["speed"] = time.perf_counter() - t_phase

    results["_total_s"] = time.perf_counter() - t0
    report = {"env": env, "preset": args.preset, "seeds": args.seeds, "note": args.note,
              "results": {k: v for k, v in results.items() if not k.startswith("_")},
              "speed": speed, "segmentation": seg, "total_s": results["_total_s"], "phase_s": results["_phase_s"],
              "reused_runs": results["_reused"], "commands": cmds}
    (out / "report.json").write_text(json.dumps(relativize(report, ROOT), indent=2, default=str))
    text_md = write_report(out, env, relativize(results, ROOT), speed, relativize(seg, ROOT), cmds, args.note)
    if args.compare:
        (out / "report.md").write_text(text_md + "\n" + compare(out, args.compare))
    print(f"[report] wrote {rel(out / 'report.md')} in {results['_total_s'] / 60:.1f} min")
    return out


def knn_data_args(spec: dict, data: str | None) -> list[str]:
    """tools/eval_knn.py's data flags: the offline shapes, knn_bank labelled and knn_test held-out images, or
    the data the ssl runs pretrained on (--vision-data): its training split as the labelled bank and its
    validation split held out, as DINO evaluates."""
    if not data or data == "shapes":
        return ["--train-size", str(spec["knn_bank"]), "--test-size", str(spec["knn_test"])]
    return ["--data", data, "--train-split", "train", "--test-split", "val"]


def knn_phase(progress: Progress, job: Job, spec: dict, by_job: dict, work: Path, cmds: list[str],
              data: str | None = None) -> dict:
    """tools/eval_knn.py on every self-supervised export at once (one labelled bank, one held-out set): the
    weighted k-NN of each, of the same network at its initialisation and of the raw pixels.
    Returns {(role, seed): that model's entry, with the shared raw-pixel result and the test-set size}."""
    runs = [run for run in by_job.values() if run.family == "ssl"]
    dirs = [str(work / run.label / "final") for run in runs]
    out = work / "knn" / "knn.json"
    sizes = knn_data_args(spec, data)
    job.cmd = [sys.executable, "tools/eval_knn.py", *dirs, *sizes, "--out", str(out)]
    cmds.append("uv run tools/eval_knn.py " + " ".join(rel(d) for d in dirs) + " " + " ".join(sizes)
                + f" --out {rel(out)}")
    progress.run(job)
    res = json.loads(out.read_text())
    return {(run.role, run.seed): {**res["models"][d], "raw_pixels": res["raw_pixels"], "n_test": res["n_test"]}
            for run, d in zip(runs, dirs)}


def segmentation(progress: Progress, jobs: list[Job], drawn: list[Run], work: Path, preset: dict, cmds: list[str],
                 out: Path, results: dict) -> list:
    """tools/segment.py: the mIoU of every vision and self-supervised model's thresholded cls attention on the
    shapes test set (one process), then the attention overlays of each white-box model."""
    dirs = [str(work / run.label / "final") for run in drawn]
    seg_dir = work / "segment"
    job = next(j for j in jobs if j.name == "segment")
    job.cmd = [sys.executable, "tools/segment.py", "miou", *(a for d in dirs for a in ("--model-dir", d)),
               "--n", str(preset["segment_images"]), "--out-dir", str(seg_dir)]
    cmds.append("uv run tools/segment.py miou --model-dir " + " --model-dir ".join(rel(d) for d in dirs)
                + f" --n {preset['segment_images']} --out-dir {rel(seg_dir)}")
    progress.run(job)
    seg = json.loads((seg_dir / "results.json").read_text())
    for row, run in zip(seg, drawn):  # the tool names rows by class; the report by family, role and preset
        row["model"] = f"{run.family} {run.role}: {run.model}"
    overlays = []
    for run, d in zip(drawn, dirs):
        if run.role not in WHITE_BOX:
            continue
        ov_dir = work / f"overlays-{run.label}"
        job = next(j for j in jobs if j.name == f"overlays-{run.label}")
        job.cmd = [sys.executable, "tools/segment.py", "overlay", "--model-dir", d, "--shapes", "2",
                   "--skimage", "astronaut", "--out-dir", str(ov_dir)]
        cmds.append(f"uv run tools/segment.py overlay --model-dir {rel(d)} --shapes 2 --skimage astronaut "
                    f"--out-dir {rel(ov_dir)}")
        progress.run(job)
        overlays += copy_overlays(ov_dir, out)
    results["_overlays"] = overlays
    return seg


if __name__ == "__main__":
    main()
