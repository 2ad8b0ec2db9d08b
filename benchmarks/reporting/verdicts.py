"""Verdicts on CRATE's white-box claims from layer-wise records (benchmarks/report.py).

A record is ``{"step", "layers": {group: {measure: [[batch mean, batch std], ...per layer]}}}``
(crate_core.train.measure, B samples of one fixed batch). Claims, per stack of CRATE layers:

- depth: Rc(Z^{l+1/2}) decreases with l (plain and official protocol); the fraction of zeros
  of Z^{l+1} increases with l. Statistic: the least-squares slope b of the per-layer batch means
  against l (units per layer), after training.
- training: the layer-averaged Rc falls and the layer-averaged sparsity rises from step 0 to the
  end. Statistic: delta = mean_l m_l(final) - mean_l m_l(init).

The rule for "within noise" (stated in report.md): each layer mean has the standard error
s_l / sqrt(B). Treating the layer means as independent, SE(b) = sqrt(sum_l w_l^2 s_l^2 / B) with
w_l = (l - lbar) / sum_l (l - lbar)^2, and SE(delta) = sqrt(sum_l (s_l,init^2 + s_l,final^2) / B) / L.
The same samples pass through every layer, so the means are positively correlated and these
SEs are upper bounds: the rule errs towards "within noise". With N seeds the statistic is the
mean over seeds and its noise sqrt(SE_rms^2 / N + std_seeds^2 / N). A claim *holds* when the
statistic points the claimed way and exceeds 2 noise units (about a two-sided 95% z-test),
*does not hold* when it points the other way by more than 2 units, else it is *within noise*.
"""

from __future__ import annotations

import math

Z = 2.0
MEASURES = {  # measure -> (name in report.md, claimed sign of the slope / of the training delta)
    "rc": ("Rc(Z^{l+1/2}) plain", -1),
    "rc_official": ("Rc(Z^{l+1/2}) official protocol", -1),
    "sparsity": ("sparsity of Z^{l+1} (fraction of zeros)", +1),
    "code_sparsity": ("sparsity of the ISTA code (fraction of zeros)", +1),
}


def slope(means: list[float], stds: list[float], batch: int) -> tuple[float, float]:
    """(least-squares slope of means over layers 1..L, its standard error)."""
    L = len(means)
    if L < 2:
        return float("nan"), float("nan")
    xbar = (L + 1) / 2
    sxx = sum((l - xbar) ** 2 for l in range(1, L + 1))
    w = [(l - xbar) / sxx for l in range(1, L + 1)]
    b = sum(wl * m for wl, m in zip(w, means))
    se = math.sqrt(sum(wl * wl * s * s for wl, s in zip(w, stds)) / batch)
    return b, se


def delta(init: list, final: list, batch: int) -> tuple[float, float]:
    """(layer-averaged final - init, its standard error); init/final are [[mean, std], ...]."""
    L = len(final)
    d = sum(f[0] for f in final) / L - sum(i[0] for i in init) / L
    se = math.sqrt(sum(i[1] ** 2 + f[1] ** 2 for i, f in zip(init, final)) / batch) / L
    return d, se


def decide(values: list[float], ses: list[float], sign: int) -> dict:
    """Verdict over seeds for per-seed statistics ``values`` with batch SEs ``ses``."""
    n = len(values)
    mean = sum(values) / n
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else 0.0
    se_rms = math.sqrt(sum(s * s for s in ses) / n)
    noise = math.sqrt(se_rms**2 / n + std**2 / n)
    if not math.isfinite(mean) or not math.isfinite(noise):
        verdict = "not measured"
    elif mean * sign > Z * noise:
        verdict = "holds"
    elif -mean * sign > Z * noise:
        verdict = "does not hold"
    else:
        verdict = "within noise"
    return {"value": mean, "std_seeds": std, "noise": noise, "se_batch": se_rms, "seeds": n, "verdict": verdict}


def right_steps(means: list[float], sign: int) -> int:
    return sum((b - a) * sign > 0 for a, b in zip(means, means[1:]))


def claim_verdicts(runs: list[list[dict]], batch: int) -> dict:
    """Per group and measure, the depth and training verdicts over the seeds' records ``runs``
    (one list of records per seed, all of the same model)."""
    runs = [r for r in runs if r]
    if not runs:
        return {}
    out: dict = {}
    for group, measures in runs[0][-1]["layers"].items():
        if "sparsity" not in measures:  # only stacks of CRATE layers (MSSA + ISTA) carry the claims
            continue
        for m, (_, sign) in MEASURES.items():
            if m not in measures or (m == "code_sparsity" and measures[m] == measures.get("sparsity")):
                continue  # the code is Z^{l+1} itself for the square block: one verdict, not two
            depth, train, steps_ok, final_means, init_means = [], [], [], [], []
            for recs in runs:
                fin, ini = recs[-1]["layers"][group][m], recs[0]["layers"][group][m]
                means, stds = [v[0] for v in fin], [v[1] for v in fin]
                depth.append(slope(means, stds, batch))
                steps_ok.append(right_steps(means, sign))
                final_means.append(means)
                init_means.append([v[0] for v in ini])
                if recs[0]["step"] != recs[-1]["step"]:
                    train.append(delta(ini, fin, batch))
            L = len(final_means[0])
            entry = {
                "depth": decide([d[0] for d in depth], [d[1] for d in depth], sign),
                "right_steps": steps_ok,
                "layer_steps": L - 1,
                "final_per_layer": [sum(ms[l] for ms in final_means) / len(final_means) for l in range(L)],
                "init_per_layer": [sum(ms[l] for ms in init_means) / len(init_means) for l in range(L)],
                "spread_per_layer": [runs[0][-1]["layers"][group][m][l][1] for l in range(L)],
            }
            if train:
                entry["training"] = decide([t[0] for t in train], [t[1] for t in train], sign)
            out.setdefault(group, {})[m] = entry
    return out


def fmt_stat(d: dict, unit: str = "", digits: int = 4) -> str:
    s = f"{d['value']:+.{digits}g}{unit}"
    if d["seeds"] > 1:
        s += f" ± {d['std_seeds']:.{digits}g} (std over {d['seeds']} seeds)"
    return s + f"; noise {d['noise']:.2g} (batch SE {d['se_batch']:.2g})"


def verdict_lines(family: str, verdicts: dict) -> list[str]:
    """Markdown table rows of one family's verdicts."""
    if not verdicts:
        return [f"No stack of CRATE layers was measured for {family}."]
    lines = ["| stack | claim | statistic | verdict |", "|---|---|---|---|"]
    for group, measures in verdicts.items():
        for m, e in measures.items():
            name, sign = MEASURES[m]
            way = "decreases" if sign < 0 else "increases"
            per = ", ".join(f"{v:.3g}" for v in e["final_per_layer"])
            spread = ", ".join(f"{v:.2g}" for v in e["spread_per_layer"])
            steps = "/".join(str(k) for k in e["right_steps"])
            lines.append(
                f"| {group} | {name} {way} with depth (after training) | slope {fmt_stat(e['depth'], ' per layer')}; "
                f"per layer {per} (batch std {spread}); {steps} of {e['layer_steps']} layer steps move the claimed "
                f"way | **{e['depth']['verdict']}** |"
            )
            if "training" in e:
                init = ", ".join(f"{v:.3g}" for v in e["init_per_layer"])
                lines.append(
                    f"| {group} | {name} {way} over training (layer mean) | change {fmt_stat(e['training'])}; "
                    f"per layer at step 0: {init} | **{e['training']['verdict']}** |"
                )
    return lines


def above_floor(acc: float, floor: float, n: int) -> dict:
    """Is a k-NN accuracy ``acc`` above a floor accuracy ``floor``, both measured on the same ``n`` held-out
    images? The difference d = acc - floor; its noise sqrt(acc (1 - acc) / n + floor (1 - floor) / n) (the two
    binomial standard errors as if independent: the shared images make them positively correlated, so this
    is an upper bound, as for the layer-wise claims). Holds beyond Z noise units, does not hold below -Z."""
    se = math.sqrt((acc * (1 - acc) + floor * (1 - floor)) / n)
    d = acc - floor
    verdict = "holds" if d > Z * se else "does not hold" if d < -Z * se else "within noise"
    return {"difference": d, "se": se, "verdict": verdict}


def floor_verdict_lines(acc: float | None, floor: dict | None) -> list[str]:
    """Markdown rows: the k-NN accuracy against its raw-pixel and at-initialisation floors."""
    if acc is None or not floor:
        return ["No k-NN evaluation was recorded."]
    lines = ["| claim | statistic | verdict |", "|---|---|---|"]
    for key, name in (("knn_raw_pixels", "raw pixels"), ("knn_at_init", "the same network at initialisation")):
        v = above_floor(acc, floor[key], floor["n"])
        lines.append(f"| k-NN top-1 above {name} | {acc:.3f} vs {floor[key]:.3f} on {floor['n']} held-out images: "
                     f"difference {v['difference']:+.3f}, noise {v['se']:.3f} | **{v['verdict']}** |")
    return lines
