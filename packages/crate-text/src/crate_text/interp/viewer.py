"""Static, self-contained HTML viewer and JSON export of NeuronReports (no server, no network:
inline CSS, inline JS, inline SVG).

    out/index.html                     summary: per model and layer, dead fraction, frequency and
                                       selectivity medians; histograms comparing the models
    out/<model>/layer_<l>.html         one entry (div.neuron) per neuron, sorted by a statistic,
                                       each with its top contexts, tokens shaded by activation
    out/neurons.json                   the same data for notebooks
"""

from __future__ import annotations

import html
import json
import math
import re
from pathlib import Path

import numpy as np

from .neurons import NeuronReport

SORT_KEYS = ("frequency", "selectivity", "max", "mean_active", "index")
COLORS = ("#d95f02", "#1b9e77", "#7570b3", "#e7298a")

CSS = """
body{font-family:system-ui,sans-serif;margin:1.5em;color:#222;max-width:1200px}
table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}
th{background:#f3f3f3}.neuron{border-top:1px solid #ddd;padding:.4em 0}.neuron h3{font-size:1em;margin:.2em 0}
.stats{color:#555;font-size:.9em}.ctx{font-family:ui-monospace,monospace;font-size:.85em;white-space:pre;
margin:1px 0;overflow-x:auto}.tok{background:rgba(230,85,13,var(--a));border-radius:2px}
.tok.center{outline:1px solid #333}.val{color:#777;display:inline-block;width:5em}.dead{color:#999}
figure{display:inline-block;margin:.5em 1em .5em 0}figcaption{font-size:.9em;color:#444}
"""

SORT_JS = """
function sortNeurons(key){const list=document.getElementById('neurons');
const items=[...list.querySelectorAll('.neuron')];const asc=(key==='selectivity'||key==='index');
items.sort((a,b)=>{let x=parseFloat(a.dataset[key]),y=parseFloat(b.dataset[key]);
if(isNaN(x))x=asc?Infinity:-Infinity;if(isNaN(y))y=asc?Infinity:-Infinity;return asc?x-y:y-x;});
items.forEach(e=>list.appendChild(e));const sel=document.getElementById('sort');if(sel)sel.value=key;}
window.addEventListener('DOMContentLoaded',()=>{const m=location.hash.match(/sort=(\w+)/);if(m)sortNeurons(m[1]);});
"""


def slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", name).strip("-") or "model"


def _fmt(x: float, digits: int = 3) -> str:
    return "–" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{digits}g}"


def layer_summary(layer: dict, k: int) -> dict:
    """Dead fraction and medians over the layer's neurons (selectivity over neurons with a full top-k)."""
    freq, sel, n_top = layer["frequency"], layer["selectivity"], layer["n_top"]
    alive = layer["count"] > 0
    full = n_top >= k
    return dict(
        neurons=int(freq.size),
        dead_fraction=float(1 - alive.mean()),
        frequency_median=float(np.median(freq)),
        frequency_mean=float(freq.mean()),
        frequency_median_alive=float(np.median(freq[alive])) if alive.any() else math.nan,
        mean_active_median=float(np.nanmedian(layer["mean_active"])) if alive.any() else math.nan,
        selectivity_median=float(np.median(sel[full])) if full.any() else math.nan,
        selectivity_mean=float(sel[full].mean()) if full.any() else math.nan,
        full_topk_neurons=int(full.sum()),
    )


def report_summary(report: NeuronReport) -> dict:
    """Per-layer summaries and the pooled figures over all layers."""
    k = report.settings["k"]
    per_layer = [layer_summary(layer, k) for layer in report.layers]
    pooled = layer_summary(
        {
            name: np.concatenate([l[name] for l in report.layers])
            for name in ("frequency", "selectivity", "n_top", "count", "mean_active")
        },
        k,
    )
    return dict(layers=per_layer, all=pooled)


# ---- JSON ---------------------------------------------------------------------------------------
def _num(x, digits: int = 5):
    x = float(x)
    return None if math.isnan(x) or math.isinf(x) else float(f"{x:.{digits}g}")


def to_json(reports: list[NeuronReport], decode) -> dict:
    """Everything in plain lists: per model and layer, per neuron statistics and top contexts
    (token ids, their strings in ``vocab``, activations; the activating token at index ``before``)."""
    used: set[int] = set()
    models = []
    for rep in reports:
        layers = []
        for li, layer in enumerate(rep.layers):
            neurons = []
            for j in range(layer["frequency"].size):
                top = []
                for r in range(int(layer["n_top"][j])):
                    ids = [int(t) for t in layer["ctx_ids"][r, j]]
                    used.update(t for t in ids if t >= 0)
                    top.append(
                        dict(
                            value=_num(layer["top_val"][r, j]),
                            position=int(layer["top_pos"][r, j]),
                            ids=ids,
                            acts=[_num(a, 4) for a in layer["ctx_act"][r, j]],
                        )
                    )
                neurons.append(
                    dict(
                        index=j,
                        count=int(layer["count"][j]),
                        frequency=_num(layer["frequency"][j]),
                        mean_active=_num(layer["mean_active"][j]),
                        max=_num(layer["max"][j]),
                        selectivity=_num(layer["selectivity"][j]),
                        top=top,
                    )
                )
            layers.append(dict(layer=li, neurons=neurons))
        summ = report_summary(rep)
        models.append(
            dict(
                name=rep.model,
                source=rep.source,
                data=rep.data,
                settings=rep.settings,
                summary={
                    k: (
                        {kk: _num(vv) if isinstance(vv, float) else vv for kk, vv in v.items()}
                        if isinstance(v, dict)
                        else [
                            {kk: _num(vv) if isinstance(vv, float) else vv for kk, vv in d.items()} for d in v
                        ]
                    )
                    for k, v in summ.items()
                },
                layers=layers,
            )
        )
    vocab = {str(t): decode(t) for t in sorted(used)}
    return dict(format="crate-neurons/1", models=models, vocab=vocab)


# ---- SVG histograms -------------------------------------------------------------------------------
def svg_histogram(
    series: dict[str, np.ndarray],
    lo: float,
    hi: float,
    bins: int,
    xlabel: str,
    width: int = 460,
    height: int = 220,
) -> str:
    """Overlaid step histograms (fraction of neurons per bin) of each named series, as inline SVG."""
    edges = np.linspace(lo, hi, bins + 1)
    hists = {}
    for name, vals in series.items():
        v = np.clip(np.asarray(vals, dtype=float), lo, hi)
        v = v[~np.isnan(v)]
        h, _ = np.histogram(v, edges)
        hists[name] = h / max(v.size, 1)
    top = max([h.max() for h in hists.values() if h.size] + [1e-9])
    L, R, T, B = 45, 10, 10, 40
    pw, ph = width - L - R, height - T - B
    sx = lambda x: L + (x - lo) / (hi - lo) * pw  # noqa: E731
    sy = lambda y: T + ph - y / top * ph  # noqa: E731
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" class="hist">',
        f'<rect x="{L}" y="{T}" width="{pw}" height="{ph}" fill="none" stroke="#999"/>',
    ]
    for i in range(5):
        x = lo + (hi - lo) * i / 4
        out.append(
            f'<text x="{sx(x):.1f}" y="{T + ph + 14}" font-size="10" text-anchor="middle">{x:.3g}</text>'
        )
        y = top * i / 4
        out.append(f'<text x="{L - 4}" y="{sy(y) + 3:.1f}" font-size="10" text-anchor="end">{y:.2f}</text>')
    out.append(
        f'<text x="{L + pw / 2}" y="{height - 6}" font-size="11" text-anchor="middle">{html.escape(xlabel)}</text>'
    )
    for n, (name, h) in enumerate(hists.items()):
        c = COLORS[n % len(COLORS)]
        pts = []
        for i, v in enumerate(h):
            pts += [f"{sx(edges[i]):.1f},{sy(v):.1f}", f"{sx(edges[i + 1]):.1f},{sy(v):.1f}"]
        out.append(f'<polyline points="{" ".join(pts)}" fill="none" stroke="{c}" stroke-width="1.8"/>')
        out.append(
            f'<text x="{L + pw - 4}" y="{T + 14 + 13 * n}" font-size="11" fill="{c}" '
            f'text-anchor="end">{html.escape(name)}</text>'
        )
    out.append("</svg>")
    return "".join(out)


# ---- HTML pages ---------------------------------------------------------------------------------
def _page(title: str, body: str, script: str = "") -> str:
    return (
        f'<!DOCTYPE html><html><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
        f"<style>{CSS}</style>{f'<script>{script}</script>' if script else ''}</head>"
        f"<body>{body}</body></html>"
    )


def _token_html(text: str) -> str:
    return html.escape(text.replace("\n", "⏎"))


def _context_html(ids, acts, value: float, scale: float, before: int, decode) -> str:
    parts = [f'<span class="val">{value:.3g}</span>']
    for i, (t, a) in enumerate(zip(ids, acts)):
        if t < 0:
            continue
        alpha = 0.0 if math.isnan(a) or scale <= 0 else min(max(a / scale, 0.0), 1.0)
        cls = "tok center" if i == before else "tok"
        parts.append(
            f'<span class="{cls}" style="--a:{alpha:.2f}" title="{a:.3g}">{_token_html(decode(int(t)))}</span>'
        )
    return f'<div class="ctx">{"".join(parts)}</div>'


def layer_page(rep: NeuronReport, li: int, decode, sort: str, contexts: int, index_href: str) -> str:
    """One div.neuron per neuron of layer ``li``, ordered by ``sort`` (descending; selectivity
    and index ascending), each with up to ``contexts`` top contexts."""
    layer = rep.layers[li]
    m = layer["frequency"].size
    before = rep.settings["before"]
    key = np.arange(m) if sort == "index" else layer[sort]
    descending = sort not in ("selectivity", "index")
    filled = np.where(np.isnan(key), -np.inf if descending else np.inf, key)
    order = np.argsort(-filled if descending else filled, kind="stable")
    summ = layer_summary(layer, rep.settings["k"])
    items = []
    for j in order:
        n_top = int(layer["n_top"][j])
        stats = (
            f"freq {_fmt(layer['frequency'][j])} · mean active {_fmt(layer['mean_active'][j])} · "
            f"max {_fmt(layer['max'][j])} · selectivity {_fmt(layer['selectivity'][j])} bits over "
            f"{n_top} top tokens"
        )
        ctx = "".join(
            _context_html(
                layer["ctx_ids"][r, j],
                layer["ctx_act"][r, j],
                float(layer["top_val"][r, j]),
                float(layer["max"][j]),
                before,
                decode,
            )
            for r in range(min(n_top, contexts))
        )
        dead = layer["count"][j] == 0
        data = " ".join(
            f'data-{s.replace("_", "")}="{_num(layer[s][j]) if s != "index" else j}"' for s in SORT_KEYS
        )
        items.append(
            f'<div class="neuron{" dead" if dead else ""}" id="n{j}" {data}>'
            f'<h3>neuron {j}{" (dead)" if dead else ""}</h3><div class="stats">{stats}</div>{ctx}</div>'
        )
    options = "".join(
        f'<option value="{s.replace("_", "")}"{" selected" if s == sort else ""}>{s}</option>'
        for s in SORT_KEYS
    )
    head = (
        f'<p><a href="{index_href}">summary</a></p><h1>{html.escape(rep.model)} · layer {li}</h1>'
        f"<p>{m} neurons ({rep.source}), {rep.data['tokens']} tokens of {html.escape(rep.data['path'])}; "
        f"dead fraction {summ['dead_fraction']:.3f}, median frequency {_fmt(summ['frequency_median'])}, "
        f"median selectivity {_fmt(summ['selectivity_median'])} bits (of at most "
        f"{math.log2(rep.settings['k']):.2f}). Shading: activation / neuron max; outlined: the "
        f'activating token (append #sort=KEY to the address to open sorted by KEY).</p><p>sort by <select id="sort" onchange="sortNeurons(this.value)">{options}</select></p>'
    )
    return _page(f"{rep.model} layer {li}", head + f'<div id="neurons">{"".join(items)}</div>', SORT_JS)


def summary_page(reports: list[NeuronReport], links: dict[str, list[str]]) -> str:
    k = reports[0].settings["k"]
    rows = []
    for rep in reports:
        summ = report_summary(rep)
        for li, s in enumerate(summ["layers"] + [summ["all"]]):
            last = li == len(rep.layers)
            where = "all layers" if last else f'<a href="{links[rep.model][li]}">layer {li}</a>'
            bold = ' style="font-weight:bold"' if last else ""
            rows.append(
                f"<tr{bold}><td style='text-align:left'>"
                f"{html.escape(rep.model)}</td><td>{rep.source}</td><td style='text-align:left'>{where}</td>"
                f"<td>{s['neurons']}</td><td>{s['dead_fraction']:.3f}</td><td>{_fmt(s['frequency_median'])}</td>"
                f"<td>{_fmt(s['frequency_mean'])}</td><td>{_fmt(s['mean_active_median'])}</td>"
                f"<td>{_fmt(s['selectivity_median'])}</td><td>{s['full_topk_neurons']}</td></tr>"
            )
    table = (
        "<table><tr><th>model</th><th>source</th><th>layer</th><th>neurons</th><th>dead fraction</th>"
        "<th>median freq</th><th>mean freq</th><th>median mean-when-active</th>"
        f"<th>median selectivity (bits)</th><th>neurons with full top-{k}</th></tr>{''.join(rows)}</table>"
    )
    eps = 1e-6
    freq = {r.model: np.log10(np.concatenate([l["frequency"] for l in r.layers]) + eps) for r in reports}
    sel = {r.model: np.concatenate([l["selectivity"][l["n_top"] >= k] for l in r.layers]) for r in reports}
    figs = (
        f"<figure>{svg_histogram(freq, math.log10(eps), 0.0, 30, 'log10(activation frequency + 1e-6)')}"
        "<figcaption>activation frequency, all layers (dead neurons at the left edge)</figcaption></figure>"
        f"<figure>{svg_histogram(sel, 0.0, math.log2(k), 20, f'token selectivity entropy (bits, top-{k})')}"
        f"<figcaption>token entropy of the top-{k} activating tokens (lower = more selective)</figcaption></figure>"
    )
    d = reports[0].data
    s = reports[0].settings
    intro = (
        f"<h1>Neuron statistics</h1><p>{d['tokens']} tokens ({d['windows']} windows of {d['block_size']}) "
        f"of {html.escape(d['path'])} (tokenizer {html.escape(d['tokenizer'])}); a neuron is active "
        f"when its activation exceeds {s['threshold']}; selectivity is the entropy of the token ids "
        f"at its top-{k} activations (median over neurons with {k} active tokens); dead = never active.</p>"
    )
    return _page("neuron statistics", intro + table + figs)


def write_viewer(
    reports: list[NeuronReport], out: Path, decode, sort: str = "frequency", contexts: int = 8
) -> dict:
    """Write index.html, one page per model and layer, and neurons.json under ``out`` (which must
    exist and be empty or new). Returns {"index": path, "pages": [...], "json": path}."""
    if sort not in SORT_KEYS:
        raise ValueError(f"unknown sort key {sort!r}; choose one of {list(SORT_KEYS)}")
    names = [r.model for r in reports]
    if len(set(names)) != len(names) or len({slug(n) for n in names}) != len(names):
        raise ValueError(f"model names must be distinct, got {names}")
    cache: dict[int, str] = {}

    def dec(t: int) -> str:
        if t not in cache:
            cache[t] = decode(t)
        return cache[t]

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    links, pages = {}, []
    for rep in reports:
        folder = out / slug(rep.model)
        folder.mkdir(exist_ok=True)
        links[rep.model] = []
        for li in range(len(rep.layers)):
            page = folder / f"layer_{li}.html"
            page.write_text(layer_page(rep, li, dec, sort, contexts, "../index.html"), encoding="utf-8")
            links[rep.model].append(f"{slug(rep.model)}/layer_{li}.html")
            pages.append(page)
    index = out / "index.html"
    index.write_text(summary_page(reports, links), encoding="utf-8")
    js = out / "neurons.json"
    js.write_text(json.dumps(to_json(reports, dec)), encoding="utf-8")
    return dict(index=index, pages=pages, json=js)
