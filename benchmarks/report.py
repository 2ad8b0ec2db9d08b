"""The cross-modality report: CRATE vs the standard transformer in every family, with the
white-box measurements (per-layer Rc and sparsity) at initialisation, over training and after.

    uv run benchmarks/report.py                          # --preset quick, offline, ~15 min on 2 CPU cores
    uv run benchmarks/report.py --preset full --name full-run
    uv run benchmarks/report.py --only vision gpt --vision-data imagefolder:/data/imagenette
    uv run benchmarks/report.py --compare benchmarks/reports/quick-reference   # numbers side by side

Every family trains a CRATE model and its standard counterpart through the project's own tools
(tools/train_vision.py, pretrain_mae.py, pretrain_gpt.py, pretrain_bert.py) with identical budgets
(steps, batch, learning rate, data), each with --layerwise-every so the trainer records the
per-layer measures (crate_core.probes) at step 0 and along training. Then tools/segment.py scores
the emergent segmentation of the two vision models and benchmarks/speed.py measures throughput and
memory. Output: benchmarks/reports/<name>/report.md, report.json and PNG plots; the raw runs and
their logs stay in benchmarks/reports/<name>/_work/ (git-ignored).
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
REPORTS = ROOT / "benchmarks" / "reports"
FAMILIES = ("vision", "mae", "gpt", "bert")


@dataclass
class Run:
    """One training run of one model through a project tool."""

    family: str
    role: str  # "crate" | "baseline"
    model: str
    tool: str
    args: list[str] = field(default_factory=list)

    @property
    def label(self) -> str:
        return f"{self.family}-{self.role}"


# Per preset: the shared budget of each family and the model pairs. Budgets are equal within a family.
PRESETS = {
    "quick": {
        # patch-4 vision pair (8x8 attention maps for the segmentation figures); the patch-8 default of
        # tools/train_vision.py is the accuracy run of crate-vision (README), too long for this preset
        "vision": dict(crate="crate-mini-shapes-p4", baseline="vit-mini-shapes-p4", steps=600, micro_batch=64, lr=2e-3),
        "mae": dict(crate="crate-mae-nano", baseline="vit-mae-nano", steps=400, micro_batch=64, lr=1.5e-3),
        # text: the 50k-token GPT-2 vocabulary head dominates a step on the CPU, so few short batches
        "gpt": dict(crate="crate-gpt-nano", baseline="gpt2-like-crate-gpt-nano", steps=200, micro_batch=8, lr=1e-3,
                    extra=["--eval-every", "0", "--eval-batches", "20"]),
        "bert": dict(crate="crate-bert-nano", baseline="bert-like-crate-bert-nano", steps=200, micro_batch=8,
                     lr=1e-3, extra=["--eval-every", "0", "--eval-batches", "20"]),
        "layerwise_points": 4,
        "segment_images": 300,
        "speed": ["--preset", "quick", "--batch", "8", "--seq", "128", "--repeats", "3"],
    },
    "full": {
        "vision": dict(crate="crate-mini-shapes-p4", baseline="vit-mini-shapes-p4", steps=3000, micro_batch=128,
                       lr=2e-3),
        "mae": dict(crate="crate-mae-nano", baseline="vit-mae-nano", steps=3000, micro_batch=128, lr=1.5e-3),
        "gpt": dict(crate="crate-gpt-nano", baseline="gpt2-like-crate-gpt-nano", steps=2000, micro_batch=32, lr=1e-3),
        "bert": dict(crate="crate-bert-nano", baseline="bert-like-crate-bert-nano", steps=2000, micro_batch=32, lr=1e-3),
        "layerwise_points": 8,
        "segment_images": 1000,
        "speed": ["--preset", "quick", "--batch", "32", "--repeats", "10"],
    },
}
TOOLS = {
    "vision": "tools/train_vision.py",
    "mae": "tools/pretrain_mae.py",
    "gpt": "tools/pretrain_gpt.py",
    "bert": "tools/pretrain_bert.py",
}
DATA_FLAG = {"vision": "--data", "mae": "--data", "gpt": "--data", "bert": "--data"}


def plan(preset: dict, families: list[str], data: dict[str, str | None]) -> list[Run]:
    runs = []
    for fam in families:
        spec = preset[fam]
        every = max(1, spec["steps"] // preset["layerwise_points"])
        common = [
            "--steps", str(spec["steps"]), "--micro-batch", str(spec["micro_batch"]), "--lr", str(spec["lr"]),
            "--layerwise-every", str(every), "--wandb", "disabled", "--progress", "plain", "--seed", "0",
        ]
        common += list(spec.get("extra", []))
        if data.get(fam):
            common += [DATA_FLAG[fam], data[fam]]
        runs.append(Run(fam, "crate", spec["crate"], TOOLS[fam], ["--model", spec["crate"], *common]))
        if spec["baseline"] is None:  # no standard-transformer trainer for this family yet (see README)
            continue
        runs.append(Run(fam, "baseline", spec["baseline"], TOOLS[fam], ["--model", spec["baseline"], *common]))
    return runs


def execute(cmd: list[str], log: Path) -> float:
    """Run cmd from the repo root, teeing nothing: output goes to ``log``. Returns seconds."""
    t = time.perf_counter()
    with open(log, "w") as f:
        proc = subprocess.run(cmd, cwd=ROOT, stdout=f, stderr=subprocess.STDOUT)
    dt = time.perf_counter() - t
    if proc.returncode != 0:
        tail = log.read_text()[-3000:]
        raise RuntimeError(f"command failed ({proc.returncode}): {' '.join(cmd)}\n--- {log} (tail) ---\n{tail}")
    return dt


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
    dirty = subprocess.run(["git", "status", "--porcelain"], cwd=ROOT, capture_output=True, text=True)
    return {
        "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else f"CPU: {cpu}",
        "cpu_cores": __import__("os").cpu_count(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "commit": (commit.stdout.strip() or "unknown") + (" (dirty)" if dirty.stdout.strip() else ""),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }


# ------------------------------------------------------------------------------------------------
# metrics per family: (column name, key in metrics.json, format, higher is better)
METRICS = {
    "vision": [("test top-1", "test/top1", "{:.3f}")],
    "mae": [("masked PSNR (dB)", "eval/psnr", "{:.2f}"), ("masked MSE (0-1 pixels)", "eval/mse01", "{:.4f}")],
    "gpt": [("val loss", "eval/loss", "{:.3f}")],
    "bert": [("val MLM loss", "eval/loss", "{:.3f}"), ("val MLM acc", "eval/accuracy", "{:.3f}")],
}


def fmt(v, f="{:.3g}") -> str:
    if v is None:
        return "-"
    try:
        return f.format(v)
    except (TypeError, ValueError):
        return str(v)


def plot_layerwise(records: list[dict], title: str, out: Path) -> list[str]:
    """One PNG per stack: plain Rc, official Rc and sparsity per layer, one line per measured step."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker  # noqa: F401  (integer layer ticks)

    if not records:
        return []
    written = []
    for group in records[-1]["layers"]:
        measures = [m for m in ("rc", "rc_official", "sparsity", "code_sparsity") if m in records[-1]["layers"][group]]
        if "code_sparsity" in measures and "sparsity" in measures:
            last = records[-1]["layers"][group]
            if last["code_sparsity"] == last["sparsity"]:
                measures.remove("code_sparsity")
        fig, axes = plt.subplots(1, len(measures), figsize=(4.2 * len(measures), 3.4), squeeze=False)
        cmap = plt.get_cmap("viridis")
        for ax, m in zip(axes[0], measures):
            for i, rec in enumerate(records):
                vals = rec["layers"].get(group, {}).get(m)
                if not vals:
                    continue
                mean = [v[0] for v in vals]
                std = [v[1] for v in vals]
                xs = list(range(1, len(mean) + 1))
                c = cmap(i / max(len(records) - 1, 1))
                ax.errorbar(xs, mean, yerr=std, color=c, marker="o", ms=3, capsize=2, label=f"step {rec['step']}")
            ax.set_xlabel("layer")
            ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
            ax.set_title({"rc": "Rc(Z^{l+1/2}) plain", "rc_official": "Rc official (eps 0.1)",
                          "sparsity": "zeros in Z^{l+1}", "code_sparsity": "zeros in ISTA code"}[m])
            ax.grid(alpha=0.3)
        axes[0][0].legend(fontsize=7)
        fig.suptitle(f"{title}: {group}")
        fig.tight_layout()
        path = out.with_name(f"{out.stem}-{group.replace('.', '_')}.png")
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path.name)
    return written


def trend(records: list[dict], group: str, measure: str) -> dict:
    """How a measure behaves across layers at the first and last record."""
    out = {}
    for tag, rec in (("init", records[0]), ("final", records[-1])):
        vals = [v[0] for v in rec["layers"].get(group, {}).get(measure, [])]
        if not vals:
            continue
        drops = sum(b < a for a, b in zip(vals, vals[1:]))
        out[tag] = {"values": vals, "mean": sum(vals) / len(vals), "decreasing_steps": drops, "steps": len(vals) - 1}
    return out


def layer_findings(family: str, records: list[dict]) -> list[str]:
    lines = []
    if not records:
        return [f"- {family}: no layer-wise records (the model has no CRATE layers)"]
    for group in records[-1]["layers"]:
        measures = records[-1]["layers"][group]
        if "rc" in measures:
            t = trend(records, group, "rc")
            f = t["final"]
            lines.append(
                f"- {family} / {group}: after training, plain Rc decreases from layer to layer in "
                f"{f['decreasing_steps']} of {f['steps']} steps (at init: {t['init']['decreasing_steps']} of "
                f"{t['init']['steps']})."
            )
        if "rc_official" in measures:
            t = trend(records, group, "rc_official")
            f = t["final"]
            lines.append(
                f"- {family} / {group}: official-protocol Rc decreases in {f['decreasing_steps']} of {f['steps']} "
                f"layer steps after training (init: {t['init']['decreasing_steps']} of {t['init']['steps']})."
            )
        for m in ("sparsity", "code_sparsity"):
            if m in measures:
                t = trend(records, group, m)
                lines.append(
                    f"- {family} / {group}: mean {m.replace('_', ' ')} {t['init']['mean']:.3f} at init -> "
                    f"{t['final']['mean']:.3f} after training."
                )
    return lines


def write_report(out: Path, env: dict, results: dict, speed: list[dict] | None, seg: list | None, cmds: list[str]) -> str:
    lines = [f"# crate cross-modality report: {out.name}", "",
             f"- device: {env['device']} ({env['cpu_cores']} cores visible), torch {env['torch']}, "
             f"python {env['python']}, commit {env['commit']}, {env['date']}",
             f"- total time: {results['_total_s'] / 60:.1f} min of wall time"
             + (f" in this invocation; {results['_reused']} finished run(s) were reused via --resume (their own "
                f"training time: {results['_reused_s'] / 60:.1f} min)" if results.get("_reused") else "")
             + "; " + ", ".join(f"{k} {v / 60:.1f} min" for k, v in results.get("_phase_s", {}).items()), ""]
    lines += ["## Task metrics, CRATE vs the standard transformer (identical budgets)", ""]
    speed_by = {r["model"]: r for r in (speed or [])}
    header = "| family | metric | CRATE | baseline | params CRATE / baseline (M) | train throughput CRATE / baseline | infer throughput CRATE / baseline | peak MB CRATE / baseline |"
    lines += [header, "|---|---|---|---|---|---|---|---|"]
    for fam in FAMILIES:
        if fam not in results:
            continue
        c = results[fam]["crate"]
        b = results[fam].get("baseline") or {"model": "(none)", "metrics": {}}
        sc, sb = speed_by.get(c["model"], {}), speed_by.get(b["model"], {})
        for i, (name, key, f) in enumerate(METRICS[fam]):
            extra = ["", "", "", ""]
            if i == 0:
                extra = [
                    f"{fmt((c['metrics'].get('params') or sc.get('params') or 0) / 1e6, '{:.2f}')} / "
                    f"{fmt((b['metrics'].get('params') or sb.get('params') or 0) / 1e6, '{:.2f}')}",
                    f"{fmt(sc.get('train_per_s'), '{:,.0f}')} / {fmt(sb.get('train_per_s'), '{:,.0f}')} {sc.get('unit', '')}",
                    f"{fmt(sc.get('infer_per_s'), '{:,.0f}')} / {fmt(sb.get('infer_per_s'), '{:,.0f}')} {sc.get('unit', '')}",
                    f"{fmt(sc.get('peak_mem_mb'), '{:,.0f}')} / {fmt(sb.get('peak_mem_mb'), '{:,.0f}')}",
                ]
            lines.append(
                f"| {fam} ({c['model']} vs {b['model']}) | {name} | {fmt(c['metrics'].get(key), f)} | "
                f"{fmt(b['metrics'].get(key), f)} | " + " | ".join(extra) + " |"
            )
    lines += ["", "Throughput and peak memory come from benchmarks/speed.py (synthetic inputs, median of repeats; "
              "CPU peak memory is the whole process's resident set size).", ""]
    lines += ["## Layer-wise white-box measurements", "",
              "Each plot shows, per layer, the plain Rc(Z^{l+1/2} | U^l) (eps 0.1), the official protocol "
              "(per-head unit-normalised projections, eps 0.1) and the fraction of zeros after ISTA, "
              "at initialisation (step 0, dark) and along training (light = final). Error bars: spread over the batch.", ""]
    for fam in FAMILIES:
        if fam not in results:
            continue
        c = results[fam]["crate"]
        lines += [f"### {fam}: {c['model']}", ""]
        lines += layer_findings(fam, c["layerwise"])
        lines += [""] + [f"![{fam} layer-wise]({p})" for p in c.get("plots", [])] + [""]
    if seg:
        lines += ["## Emergent segmentation (shapes test set, thresholded cls attention vs true masks)", "",
                  "| model | mIoU |", "|---|---|"]
        for row in seg:
            lines.append(f"| {row.get('model', row.get('model_dir', '?'))} | {fmt(row.get('miou'), '{:.3f}')} |")
        lines += [""] + [f"![overlay]({p})" for p in results.get("_overlays", [])] + [""]
    lines += ["## Commands", "", "Every figure above came from these commands (run from the repository root):", "", "```"]
    lines += cmds + ["```", ""]
    text = "\n".join(lines)
    (out / "report.md").write_text(text)
    return text


def flat_numbers(report: dict) -> dict[str, float]:
    flat = {}
    for fam in FAMILIES:
        for role in ("crate", "baseline"):
            r = (report.get("results", {}).get(fam) or {}).get(role)
            if not r:
                continue
            for _, key, _ in METRICS[fam]:
                v = r["metrics"].get(key)
                if isinstance(v, (int, float)):
                    flat[f"{fam}/{role}/{key}"] = v
    for s in report.get("speed") or []:
        flat[f"speed/{s['model']}/train_per_s"] = s["train_per_s"]
    for row in report.get("segmentation") or []:
        flat[f"segment/{row.get('model', '?')}/miou"] = row.get("miou")
    return flat


def compare(new: Path, old: Path) -> str:
    a = json.loads((old / "report.json").read_text())
    b = json.loads((new / "report.json").read_text())
    fa, fb = flat_numbers(a), flat_numbers(b)
    lines = [f"## Compared with {old.name} (commit {a['env']['commit']}, {a['env']['device']})", "",
             f"| figure | {old.name} | {new.name} | ratio |", "|---|---|---|---|"]
    for k in sorted(set(fa) | set(fb)):
        va, vb = fa.get(k), fb.get(k)
        ratio = f"{vb / va:.3f}" if isinstance(va, (int, float)) and isinstance(vb, (int, float)) and va else "-"
        lines.append(f"| {k} | {fmt(va)} | {fmt(vb)} | {ratio} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> Path:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="quick", help=f"one of {sorted(PRESETS)}")
    p.add_argument("--name", default=None, help="report directory name (default: the preset)")
    p.add_argument("--only", nargs="*", default=None, help=f"families to run, of {list(FAMILIES)}")
    p.add_argument("--overwrite", action="store_true", help="replace an existing report of the same name")
    p.add_argument("--resume", action="store_true", help="continue an interrupted report: finished runs are reused")
    p.add_argument("--compare", type=Path, default=None, help="an older report directory to set side by side")
    p.add_argument("--vision-data", default=None, help="tools/train_vision.py --data (default: offline shapes)")
    p.add_argument("--mae-data", default=None, help="tools/pretrain_mae.py --data (default: offline shapes)")
    p.add_argument("--text-data", default=None, help="prepared token directory for gpt and bert (default: Shakespeare)")
    p.add_argument("--no-speed", action="store_true")
    p.add_argument("--no-segment", action="store_true")
    args = p.parse_args(argv)

    if args.preset not in PRESETS:
        p.error(f"unknown preset {args.preset!r}; choose one of {sorted(PRESETS)}")
    families = args.only or list(FAMILIES)
    bad = [f for f in families if f not in FAMILIES]
    if bad:
        p.error(f"unknown family {bad}; choose from {list(FAMILIES)}")
    for flag, path in (("--vision-data", args.vision_data), ("--mae-data", args.mae_data), ("--text-data", args.text_data)):
        if path and ":" not in path and not Path(path).expanduser().exists():
            p.error(f"{flag} {path}: no such file or directory")
    if args.compare and not (args.compare / "report.json").is_file():
        p.error(f"--compare {args.compare}: no report.json there")
    out = REPORTS / (args.name or args.preset)
    if out.exists() and not args.resume:
        if not args.overwrite:
            p.error(f"report directory {out} already exists; pass --overwrite to replace it, --resume to "
                    f"continue it, or --name NEW")
        shutil.rmtree(out)
    work = out / "_work"
    work.mkdir(parents=True, exist_ok=True)

    preset = PRESETS[args.preset]
    data = {"vision": args.vision_data, "mae": args.mae_data, "gpt": args.text_data, "bert": args.text_data}
    env = environment()
    t0 = time.perf_counter()
    cmds: list[str] = []
    results: dict = {"_reused": 0, "_reused_s": 0.0, "_phase_s": {}}
    for run in plan(preset, families, data):
        run_dir = work / run.label
        cmd = [sys.executable, run.tool, *run.args, "--out-dir", str(run_dir)]
        cmds.append(" ".join(["uv run", run.tool, *run.args, "--out-dir", str(run_dir.relative_to(ROOT))]))
        if args.resume and (run_dir / "train_result.json").is_file() and (run_dir / "final").is_dir():
            print(f"[report] {run.label}: reusing the finished run in {run_dir}", flush=True)
            dt = float(json.loads((run_dir / "train_result.json").read_text()).get("time_s", 0.0))
            results["_reused"] += 1
            results["_reused_s"] += dt
        else:
            print(f"[report] {run.label}: {run.model} ...", flush=True)
            dt = execute(cmd, work / f"{run.label}.log")
        metrics = {}
        for name in ("train_result.json", "metrics.json"):  # the trainer's figures, then the tool's own
            if (run_dir / name).is_file():
                metrics.update(json.loads((run_dir / name).read_text()))
        records = read_layerwise(run_dir / "layerwise.jsonl")
        entry = {"model": run.model, "metrics": metrics, "layerwise": records, "wall_s": dt}
        if run.role == "crate":
            entry["plots"] = plot_layerwise(records, f"{run.family}: {run.model}", out / f"layerwise-{run.family}.png")
        results.setdefault(run.family, {})[run.role] = entry
        print(f"[report] {run.label}: done in {dt:.0f} s", flush=True)

    results["_phase_s"]["training runs"] = time.perf_counter() - t0
    t_phase = time.perf_counter()
    seg = None
    if "vision" in results and not args.no_segment:
        seg_dir = work / "segment"
        dirs = [str(work / "vision-crate" / "final"), str(work / "vision-baseline" / "final")]
        cmd = [sys.executable, "tools/segment.py", "miou", "--model-dir", dirs[0], "--model-dir", dirs[1],
               "--n", str(preset["segment_images"]), "--out-dir", str(seg_dir)]
        cmds.append("uv run tools/segment.py miou --model-dir " + " --model-dir ".join(
            str(Path(d).relative_to(ROOT)) for d in dirs) + f" --n {preset['segment_images']} --out-dir {seg_dir.relative_to(ROOT)}")
        print("[report] segmentation ...", flush=True)
        execute(cmd, work / "segment.log")
        seg = json.loads((seg_dir / "results.json").read_text())
        ov_dir = work / "overlays"
        cmd = [sys.executable, "tools/segment.py", "overlay", "--model-dir", dirs[0], "--model-dir", dirs[1],
               "--shapes", "2", "--skimage", "astronaut", "--out-dir", str(ov_dir)]
        cmds.append("uv run tools/segment.py overlay --model-dir " + " --model-dir ".join(
            str(Path(d).relative_to(ROOT)) for d in dirs) + f" --shapes 2 --skimage astronaut --out-dir {ov_dir.relative_to(ROOT)}")
        execute(cmd, work / "overlay.log")
        overlays = []
        for png in sorted(ov_dir.rglob("*.png"))[:6]:
            dest = out / f"overlay-{png.parent.name}-{png.name}"
            shutil.copy(png, dest)
            overlays.append(dest.name)
        results["_overlays"] = overlays

    if seg is not None:
        results["_phase_s"]["segmentation"] = time.perf_counter() - t_phase
    t_phase = time.perf_counter()
    speed = None
    if not args.no_speed:
        speed_out = work / "speed"
        cmd = [sys.executable, "benchmarks/speed.py", *preset["speed"], "--out", str(speed_out)]
        cmds.append("uv run benchmarks/speed.py " + " ".join(preset["speed"]) + f" --out {speed_out.relative_to(ROOT)}")
        print("[report] speed ...", flush=True)
        execute(cmd, work / "speed.log")
        speed = json.loads(speed_out.with_suffix(".json").read_text())
        results["_phase_s"]["speed"] = time.perf_counter() - t_phase

    results["_total_s"] = time.perf_counter() - t0
    report = {"env": env, "preset": args.preset, "results": {k: v for k, v in results.items() if not k.startswith("_")},
              "speed": speed, "segmentation": seg, "total_s": results["_total_s"], "phase_s": results["_phase_s"],
              "reused_runs": results["_reused"], "commands": cmds}
    (out / "report.json").write_text(json.dumps(report, indent=2, default=str))
    text = write_report(out, env, results, speed, seg, cmds)
    if args.compare:
        extra = compare(out, args.compare)
        (out / "report.md").write_text(text + "\n" + extra)
    print(f"[report] wrote {out / 'report.md'} in {results['_total_s'] / 60:.1f} min")
    return out


if __name__ == "__main__":
    main()
