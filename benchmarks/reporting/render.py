"""report.md for benchmarks/report.py: the metrics table with each task's floor, the white-box
verdicts, layer-wise plots, MAE reconstruction grids, segmentation and the commands; plus
--compare and repository-relative paths in report.json / report.md."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

from benchmarks.harness import FAMILIES, ROLES, WHITE_BOX
from benchmarks.reporting.verdicts import Z, floor_verdict_lines, verdict_lines

# per family: (row name, key in metrics.json, format, floor key in results[fam]["floor"] or None)
METRICS = {
    "vision": [("test top-1", "test/top1", "{:.3f}", "vision")],
    "mae": [("masked PSNR (dB)", "eval/psnr", "{:.2f}", "mean_colour_psnr"),
            ("masked MSE (0-1 pixels)", "eval/mse01", "{:.4f}", "mean_colour_mse01")],
    "gpt": [("val loss (nats/token)", "eval/loss", "{:.3f}", "unigram_ce")],
    "bert": [("val MLM loss (nats)", "eval/loss", "{:.3f}", "unigram_ce"),
             ("val MLM acc", "eval/accuracy", "{:.3f}", "mlm_mode_acc")],
    "ssl": [("k-NN top-1 (k 20, T 0.07)", "knn/top1", "{:.3f}", "knn")],
}
FLOOR_NAMES = {"unigram_ce": "unigram cross-entropy", "mlm_mode_acc": "most-frequent-token acc",
               "mean_colour_psnr": "mean-colour PSNR", "mean_colour_mse01": "mean-colour MSE"}


def fmt(v, f="{:.3g}") -> str:
    if v is None:
        return "-"
    try:
        return f.format(v)
    except (TypeError, ValueError):
        return str(v)


def relativize(obj, root: Path):
    """Every string holding ``root`` (absolute) made relative to it, recursively."""
    prefix = str(root).rstrip("/") + "/"
    if isinstance(obj, str):
        return obj.replace(prefix, "").replace(str(root), ".")
    if isinstance(obj, dict):
        return {k: relativize(v, root) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [relativize(v, root) for v in obj]
    return obj


def plot_layerwise(records: list[dict], title: str, out: Path) -> list[str]:
    """One PNG per stack: plain Rc, official Rc and sparsity per layer, one line per measured step."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    if not records:
        return []
    written = []
    for group in records[-1]["layers"]:
        measures = [m for m in ("rc", "rc_official", "sparsity", "code_sparsity") if m in records[-1]["layers"][group]]
        last = records[-1]["layers"][group]
        if "code_sparsity" in measures and "sparsity" in measures and last["code_sparsity"] == last["sparsity"]:
            measures.remove("code_sparsity")
        fig, axes = plt.subplots(1, len(measures), figsize=(4.2 * len(measures), 3.4), squeeze=False)
        cmap = plt.get_cmap("viridis")
        for ax, m in zip(axes[0], measures):
            for i, rec in enumerate(records):
                vals = rec["layers"].get(group, {}).get(m)
                if not vals:
                    continue
                xs = list(range(1, len(vals) + 1))
                c = cmap(i / max(len(records) - 1, 1))
                ax.errorbar(xs, [v[0] for v in vals], yerr=[v[1] for v in vals], color=c, marker="o", ms=3,
                            capsize=2, label=f"step {rec['step']}")
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


def value(entry: dict, key: str, f: str) -> str:
    v = entry["metrics"].get(key)
    sd = (entry.get("metrics_std") or {}).get(key)
    return fmt(v, f) + (f" ± {fmt(sd, f)}" if sd is not None and len(entry.get("per_seed", [])) > 1 else "")


def floor_cell(fam: str, res: dict, key: str | None, f: str) -> str:
    floor = res.get("floor") or {}
    if key == "vision":
        v = floor.get("vision")
        return f"chance {v['chance']:.3f}, majority {v['majority']:.3f}" if v else "-"
    if key == "knn":
        rows = {role: floor[role] for role in ROLES if floor.get(role)}
        if not rows:
            return "-"
        raw = next(iter(rows.values()))["knn_raw_pixels"]
        return (f"raw pixels {raw:.3f}; same network at init " + " / ".join(
            f"{r['knn_at_init']:.3f}" for r in rows.values()))
    vals = {role: (floor.get(role) or {}).get(key) for role in ("crate", "baseline")}
    if vals["crate"] is None and vals["baseline"] is None:
        return "-"
    name = FLOOR_NAMES.get(key, key)
    if vals["baseline"] is None or math.isclose(vals["crate"] or 0, vals["baseline"] or 0, rel_tol=1e-6):
        return f"{name} {fmt(vals['crate'] if vals['crate'] is not None else vals['baseline'], f)}"
    return f"{name} {fmt(vals['crate'], f)} / {fmt(vals['baseline'], f)}"


def white_box_models(results: dict) -> list[tuple[str, str]]:
    """(family, role) of every white-box model in the results, in FAMILIES then WHITE_BOX order."""
    return [(fam, role) for fam in FAMILIES if fam in results for role in WHITE_BOX if results[fam].get(role)]


def metrics_table(results: dict, speed: list[dict] | None) -> list[str]:
    speed_by = {r["model"]: r for r in (speed or [])}
    lines = ["| family | metric | white-box | baseline | floor (same evaluation data) | params white-box / baseline (M) | "
             "train throughput white-box / baseline | infer throughput white-box / baseline | "
             "peak MB white-box / baseline |",
             "|---|---|---|---|---|---|---|---|---|"]
    for fam, role in white_box_models(results):  # CRATE vs the baseline, then CBT vs the same baseline
        c = results[fam][role]
        b = results[fam].get("baseline") or {"model": "(none)", "metrics": {}}
        sc, sb = speed_by.get(c["model"], {}), speed_by.get(b["model"], {})
        if not speed:  # no speed.py phase: the training runs' samples per second (evaluation time included)
            sc = {"train_per_s": c.get("run_samples_per_s"), "unit": "samples/s"}
            sb = {"train_per_s": b.get("run_samples_per_s")}
        for i, (name, key, f, fkey) in enumerate(METRICS[fam]):
            extra = ["", "", "", ""]
            if i == 0:
                extra = [
                    f"{fmt((c['metrics'].get('params') or sc.get('params') or 0) / 1e6, '{:.2f}')} / "
                    f"{fmt((b['metrics'].get('params') or sb.get('params') or 0) / 1e6, '{:.2f}')}",
                    f"{fmt(sc.get('train_per_s'), '{:,.0f}')} / {fmt(sb.get('train_per_s'), '{:,.0f}')} {sc.get('unit', '')}",
                    f"{fmt(sc.get('infer_per_s'), '{:,.0f}')} / {fmt(sb.get('infer_per_s'), '{:,.0f}')} "
                    f"{sc.get('unit', '') if speed else ''}",
                    f"{fmt(sc.get('peak_mem_mb'), '{:,.0f}')} / {fmt(sb.get('peak_mem_mb'), '{:,.0f}')}",
                ]
            lines.append(f"| {fam} ({c['model']} vs {b['model']}) | {name} | {value(c, key, f)} | {value(b, key, f)} | "
                         f"{floor_cell(fam, results[fam], fkey, f)} | " + " | ".join(extra) + " |")
    return lines


RULE = (
    "**How a verdict is reached.** Each claim is tested on the CRATE model's layer-wise measurements of one fixed "
    "evaluation batch of B samples (the per-layer batch mean m_l and batch standard deviation s_l). *With depth*: "
    "the statistic is the least-squares slope b of m_l over the layer index after training; its noise is "
    "SE(b) = sqrt(sum_l w_l^2 s_l^2 / B), w_l = (l - mean l) / sum (l - mean l)^2. *Over training*: the statistic "
    "is the change of the layer-averaged mean from step 0 to the end; its noise is "
    "sqrt(sum_l (s_l,0^2 + s_l,end^2) / B) / L. The layer means share their samples, so these standard errors are "
    "upper bounds (the rule leans towards *within noise*). With N seeds the statistic is the mean over seeds "
    "(shown as mean ± std) and its noise sqrt(SE_rms^2 / N + std_seeds^2 / N). A claim **holds** when the "
    f"statistic points the claimed way by more than {Z:g} noise units (about a two-sided 95% z-test), "
    f"**does not hold** when it points the other way by more than {Z:g} units, and is **within noise** otherwise."
)


def write_report(out: Path, env: dict, results: dict, speed, seg, cmds: list[str], note: str | None = None) -> str:
    phases = ", ".join(f"{k} {v / 60:.1f} min" for k, v in results.get("_phase_s", {}).items())
    lines = [f"# crate cross-modality report: {out.name}", "",
             f"- device: {env['device']} ({env['cpu_cores']} cores visible), torch {env['torch']}, "
             f"python {env['python']}, commit {env['commit']}, {env['date']}",
             f"- total time: {results['_total_s'] / 60:.1f} min of wall time"
             + (f" in this invocation; {results['_reused']} finished run(s) were reused via --resume (their own "
                f"training time: {results['_reused_s'] / 60:.1f} min)" if results.get("_reused") else "")
             + (f"; {phases}" if phases else ""),
             f"- seeds: {results.get('_seeds', 1)}; 1-minute load average at the start: "
             f"{env.get('load_avg_1m', '?')} (on {env['cpu_cores']} cores; above the core count the machine was shared)"]
    if env.get("parallel_runs", 1) > 1:
        lines.append(f"- training runs: {env['parallel_runs']} side by side, {env['threads_per_run']} thread(s) each "
                     "(their throughput figures are per run)")
    if note:
        lines.append(f"- note: {note}")
    lines += ["", "## Task metrics, the white-box models (CRATE; CBT) vs the standard transformer (identical budgets)", ""]
    lines += metrics_table(results, speed)
    lines += ["", "Floors are computed on the data each metric is scored on (benchmarks/reporting/floors.py): chance "
              "and majority class of the test labels; the unigram cross-entropy of the validation ids under the "
              "training frequencies; the share of the most frequent training id among the maskable validation ids; "
              "the PSNR of filling every masked patch with its image's mean colour, on the same images and masks; "
              "the same k-NN on the raw pixels and on the self-supervised network at its initialisation. "
              + ("Throughput and peak memory come from benchmarks/speed.py (synthetic inputs, median of repeats; CPU "
                 "peak memory is the whole process's resident set size)." if speed else
                 "Train throughput: steps x batch / wall time of each training run (evaluation and layer-wise "
                 "measurements included); this preset skips benchmarks/speed.py."), ""]
    grids = [(fam, role, res[role]["recon"]) for fam, res in results.items() if not fam.startswith("_")
             for role in ("crate", "baseline") if (res.get(role) or {}).get("recon")]
    if grids:
        lines += ["## MAE reconstructions (validation images: input | masked | output)", ""]
        lines += [f"![{fam} {role} reconstruction]({p})" for fam, role, p in grids] + [""]
    lines += ["## White-box claims: verdicts", "", RULE, ""]
    for fam, role in white_box_models(results):
        c = results[fam][role]
        lines += [f"### {fam}: {c['model']}", ""]
        if fam == "ssl":  # does the k-NN beat its floors beyond noise
            lines += floor_verdict_lines(c["metrics"].get("knn/top1"), (results[fam].get("floor") or {}).get(role))
            lines += [""]
        lines += verdict_lines(fam, c.get("verdicts") or {})
        lines += [""] + [f"![{fam} layer-wise]({p})" for p in c.get("plots", [])] + [""]
    lines += ["Each plot shows, per layer, the plain Rc(Z^{l+1/2} | U^l) (eps 0.1), the official protocol (per-head "
              "unit-normalised projections, eps 0.1) and the fraction of zeros after ISTA, at initialisation (step 0, "
              "dark) and along training (light = final), seed 0. Error bars: spread (std) over the batch.", ""]
    if seg:
        lines += ["## Emergent segmentation (shapes test set, thresholded cls attention vs true masks)", "",
                  "Supervised (vision) and self-supervised (ssl, the teacher) models on the same test images; "
                  "overlays of each white-box model: cls attention per head and a PCA of the patch features.", "",
                  "| model | mIoU |", "|---|---|"]
        lines += [f"| {row.get('model', row.get('model_dir', '?'))} | {fmt(row.get('miou'), '{:.3f}')} |" for row in seg]
        lines += [""] + [f"![overlay]({p})" for p in results.get("_overlays", [])] + [""]
    lines += ["## Commands", "", "Every figure above came from these commands (run from the repository root):", "",
              "```", *cmds, "```", ""]
    text = "\n".join(lines)
    (out / "report.md").write_text(text)
    return text


def flat_numbers(report: dict) -> dict[str, float]:
    flat = {}
    for fam in FAMILIES:
        for role in ROLES:
            r = (report.get("results", {}).get(fam) or {}).get(role)
            if not r:
                continue
            for row in METRICS[fam]:
                v = r["metrics"].get(row[1])
                if isinstance(v, (int, float)):
                    flat[f"{fam}/{role}/{row[1]}"] = v
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


def copy_overlays(src: Path, out: Path, limit: int = 6) -> list[str]:
    """Copy the first ``limit`` overlay PNGs of tools/segment.py (under ``src``) into the report folder
    ``out`` as overlay-<folder>-<name>.png; returns their file names."""
    names = []
    for png in sorted(src.rglob("*.png"))[:limit]:
        dest = out / f"overlay-{png.parent.name}-{png.name}"
        shutil.copy(png, dest)
        names.append(dest.name)
    return names
