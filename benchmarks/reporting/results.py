"""Per-model results of benchmarks/report.py: metrics over seeds (mean and std), verdicts, plots and
reconstruction grids (combine), and the trivial floor of each task (floors, see floors.py)."""

from __future__ import annotations

import shutil
import statistics
from pathlib import Path

from benchmarks.harness import CHAR_DATA, ROOT, WHITE_BOX
from benchmarks.reporting import floors as rf
from benchmarks.reporting.render import plot_layerwise
from benchmarks.reporting.verdicts import claim_verdicts


def mean_std(dicts: list[dict]) -> tuple[dict, dict]:
    """Per numeric key: the mean over seeds and (with >= 2 seeds) the sample std."""
    mean, std = dict(dicts[0]), {}
    for k in dicts[0]:
        vals = [d.get(k) for d in dicts]
        if all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in vals):
            mean[k] = sum(vals) / len(vals)
            if len(vals) > 1:
                std[k] = statistics.stdev(vals)
    return mean, std


def combine(fam: str, role: str, seeds: list[dict], preset: dict, out: Path) -> dict:
    """One entry per model: metrics as the mean (and std) over seeds, verdicts over seeds, plots of seed 0."""

    first = min(seeds, key=lambda e: e["seed"])
    mean, std = mean_std([e["metrics"] for e in seeds])
    m = first["metrics"]
    run_s = m.get("train_time_s") or m.get("time_s")
    entry = {"model": first["model"], "metrics": mean, "metrics_std": std,
             "run_samples_per_s": m["steps"] * preset[fam]["micro_batch"] / run_s if run_s and m.get("steps") else None,
             "per_seed": [{"seed": e["seed"], "dir": e["dir"], "wall_s": e["wall_s"], "metrics": e["metrics"]}
                          for e in seeds], "layerwise": first["layerwise"], "wall_s": sum(e["wall_s"] for e in seeds)}
    if role in WHITE_BOX:
        batch = min(preset[fam]["micro_batch"], 10**9)
        entry["verdicts"] = claim_verdicts([e["layerwise"] for e in seeds], batch)
        name = f"layerwise-{fam}.png" if role == "crate" else f"layerwise-{fam}-{role}.png"
        entry["plots"] = plot_layerwise(first["layerwise"], f"{fam}: {first['model']}", out / name)
    recon = sorted((ROOT / first["dir"] / "recon").glob("*.png")) if fam == "mae" else []
    if recon:
        dest = out / f"mae-recon-{role}.png"
        shutil.copy(recon[-1], dest)
        entry["recon"] = dest.name
    return entry


def floors(results: dict, families: list[str], preset: dict, data: dict, knn: dict | None = None) -> None:
    """The trivial floor of each task on its evaluation data (floors.py); ``knn``: tools/eval_knn.py's result
    for the self-supervised family, keyed by role (its raw-pixel and at-initialisation k-NN are the floors)."""

    for fam in families:
        if fam not in results:
            continue
        res = results[fam]
        if fam == "vision":
            import crate_core
            import crate_vision  # noqa: F401

            size = crate_core.get_config(preset["vision"]["crate"]).image_size
            res["floor"] = {"vision": rf.vision_floor(data.get("vision") or "shapes", size)}
        elif fam == "ssl":
            res["floor"] = {role: rf.knn_floors(r) for role, r in (knn or {}).items() if role in res}
        elif fam == "mae":
            res["floor"] = {role: rf.mae_floor(ROOT / res[role]["per_seed"][0]["dir"] / "final",
                                               data.get("mae") or "shapes")
                            for role in ("crate", "baseline") if role in res}
        else:
            from crate_text import get_tokenizer

            d = ROOT / (data.get(fam) or CHAR_DATA)
            floor = rf.unigram_floor(d, get_tokenizer(d))
            res["floor"] = {"crate": floor, "baseline": floor}


