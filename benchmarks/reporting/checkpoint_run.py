"""benchmarks/report.py --checkpoint FAMILY=PATH: the measurement half on given weights, written as
report.md / report.json (paths relative to the repository) beside the layer-wise plots, attention
overlays (vision), the reconstruction grid (MAE) and the top-activating contexts (language model)."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from benchmarks.harness import ROOT
from benchmarks.reporting.checkpoints import PHOTOS, context_lines, measure
from benchmarks.reporting.progress import Job, Progress
from benchmarks.reporting.render import RULE, copy_overlays, plot_layerwise, relativize
from benchmarks.reporting.verdicts import claim_verdicts, verdict_lines


def rel(path) -> str:
    path = Path(path)
    return str(path.relative_to(ROOT)) if path.is_absolute() and path.is_relative_to(ROOT) else str(path)


def overlays(fam_path: Path, out: Path, work: Path, progress: Progress, job: Job, heads: int | None = None
             ) -> tuple[list[str], str]:
    """Attention overlays of a vision model on three photos and two shapes via tools/segment.py."""
    src = ["--model-dir", str(fam_path)] if fam_path.is_dir() else ["--official", str(fam_path)]
    if heads and not fam_path.is_dir():
        src += ["--heads", str(heads)]
    ov = work / "overlays"
    args = ["overlay", *src, "--skimage", *PHOTOS[:3], "--shapes", "2", "--out-dir", str(ov)]
    job.cmd = [sys.executable, "tools/segment.py", *args]
    progress.run(job)
    return copy_overlays(ov, out), "uv run tools/segment.py " + " ".join(rel(a) if a.startswith("/") else a for a in args)


def run_checkpoints(out: Path, models: dict, specs: dict, env: dict, note: str | None, heads: dict | None = None
                    ) -> Path:
    t0 = time.perf_counter()
    work = out / "_work"
    jobs = [Job("overlays", [], work / "overlays" / "log.txt", prior_s=30)] if "vision" in models else []
    progress = Progress(jobs)
    results, cmds = {}, []
    for fam, (model, what) in models.items():
        print(f"[report] {fam}: measuring {rel(specs[fam])} ({what}) ...", flush=True)
        entry = measure(fam, model, out, work)
        entry.update(path=rel(specs[fam]), loaded_as=what, model=type(model).__name__)
        entry["verdicts"] = claim_verdicts([[entry["record"]]], entry["batch"])
        entry["plots"] = plot_layerwise([entry["record"]], f"{fam}: {rel(specs[fam])}", out / f"layerwise-{fam}.png")
        if fam == "vision":
            entry["overlays"], cmd = overlays(specs[fam], out, work, progress, jobs[0], (heads or {}).get(fam))
            cmds.append(cmd)
        results[fam] = entry
    total = time.perf_counter() - t0
    report = {"env": env, "mode": "checkpoint", "note": note, "results": results, "total_s": total, "commands": cmds}
    report = relativize(report, ROOT)
    (out / "report.json").write_text(json.dumps(report, indent=2, default=str))
    lines = [f"# crate report on given weights: {out.name}", "",
             f"- device: {env['device']} ({env['cpu_cores']} cores visible), torch {env['torch']}, "
             f"python {env['python']}, commit {env['commit']}, {env['date']}",
             f"- total time: {total / 60:.1f} min of wall time (no training: the measurement half only)"]
    if note:
        lines.append(f"- note: {note}")
    lines += ["", "## White-box claims on these weights: verdicts", "",
              RULE + " Without a training run only the depth claims can be judged.", ""]
    for fam, e in report["results"].items():
        lines += [f"### {fam}: {e['path']} ({e['loaded_as']})", "", f"Data: {e['data']}.", ""]
        lines += verdict_lines(fam, e["verdicts"]) + [""]
        lines += [f"![{fam} layer-wise]({p})" for p in e["plots"]] + [""]
        lines += [f"![{fam} figure]({p})" for p in e.get("figures", [])]
        lines += [f"![{fam} attention overlay]({p})" for p in e.get("overlays", [])] + [""]
        if "contexts" in e:
            lines += context_lines(e["contexts"]) + [""]
    cli = " ".join(f"--checkpoint {fam}={e['path']}" for fam, e in report["results"].items())
    cli += "".join(f" --heads {fam}={k}" for fam, k in (heads or {}).items())
    lines += ["## Commands", "", "```", f"uv run benchmarks/report.py {cli} --name {out.name}", *cmds, "```", ""]
    (out / "report.md").write_text("\n".join(lines))
    print(f"[report] wrote {rel(out / 'report.md')} in {total / 60:.1f} min")
    return out
