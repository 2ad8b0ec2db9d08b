"""The GPU scorecard: is CRATE fast on this GPU, and does the Trainer keep up with a bare loop? One run,
under 6 minutes on one H100 / H200, writing a Markdown scorecard and JSON as each section finishes.

Sections, each in its own process with a time budget (killed when it runs over; what it measured so far is
kept), in this order:
  pairs-eager      CRATE vs the standard transformer at the same width and depth, each family, eager:
                   crate-gpt-base / gpt2-like-crate-gpt-base, CRATE-B/16 / ViT-B/16 (timm), crate-mae-base /
                   vit-mae-base, crate-bert-base / bert-like-crate-bert-base, on synthetic inputs at a batch
                   that fills the GPU (halved on out-of-memory): bf16 autocast training step (AdamW) and
                   inference throughput (median of --repeats after --warmup), peak memory
                   (torch.cuda.max_memory_allocated, weights and optimizer state included) and
                       MFU = FLOPs of one training step (counted per operation, crate_core.train.flops)
                             / step time / the GPU's bf16 peak (crate_core.train.flops.peak_flops);
  trainer          crate-gpt-base through crate_core.train.Trainer (torch engine, bf16, compiled) beside the
                   bare loop (benchmarks/trainer_overhead.py's: DataLoader, autocast forward, backward, clip,
                   AdamW, schedule; compiled the same way) on random tokens: ms per step and the Trainer's MFU;
  pairs-compiled   the pairs again with torch.compile (regional: every block of a stack compiled, the
                   standard way to keep cold-start compile time to one block; the first call's time is shown);
  overhead         the Trainer's step against the bare step, eager, for the torch engine, ZeRO-1 and ZeRO-2
                   (DeepSpeed in this one process: the Trainer makes its own one-process group);
  profile          torch-profiler kernel tables (top 15 by GPU time): eager CRATE-B/16 inference and one
                   crate-gpt-base training step;
  train-vision     the wall time of `tools/train_vision.py` at its defaults (it gets the time that is left;
                   when that is too little, `--only train-vision` gives it the whole budget).
Then one line per target, met or not met: crate-gpt-base >= 40% MFU through the Trainer (bf16, compiled);
CRATE-B/16 >= 2.5x ViT-B/16 training img/s and >= 3x inference img/s, eager and compiled; Trainer step
<= 1.05x the bare step with the torch engine and <= 1.10x with ZeRO-1 / ZeRO-2.

    uv run benchmarks/gpu_readiness.py                       # -> benchmarks/reports/gpu/<gpu-name>/
    uv run benchmarks/gpu_readiness.py --only trainer overhead --batch gpt=32
    uv run benchmarks/gpu_readiness.py --smoke --out /tmp/gpu-smoke   # CPU: tiny presets, a few steps

Output: scorecard.md, results.json, sections/<name>.json, logs/<name>.log, profile-*.txt.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from benchmarks.harness import (
    REPORTS,
    ROOT,
    autocast,
    build_family_model,
    context_length,
    device_name,
    lm_loss,
    synthetic_case,
    timed,
)

# (CRATE, standard, family); the vision pair first: its targets matter most if time runs short
PAIRS = [
    ("crate-base-patch16-224", "timm:vit_base_patch16_224", "vision"),
    ("crate-gpt-base", "gpt2-like-crate-gpt-base", "gpt"),
    ("crate-mae-base", "vit-mae-base", "mae"),
    ("crate-bert-base", "bert-like-crate-bert-base", "bert"),
]
SMOKE_PAIRS = [
    ("crate-tiny-test", "vit-tiny-test", "vision"),
    ("crate-gpt-nano", "gpt2-like-crate-gpt-nano", "gpt"),
    ("crate-mae-tiny-test", "vit-mae-tiny-test", "mae"),
    ("crate-bert-nano", "bert-like-crate-bert-nano", "bert"),
]
# samples per step that fill an 80 GB GPU in bf16 with room to spare (text: full context, 1024 / 512 tokens)
BATCH = {"vision": 256, "gpt": 16, "mae": 256, "bert": 32}
SMOKE_BATCH = {"vision": 2, "gpt": 2, "mae": 2, "bert": 2}
LM = "crate-gpt-base"  # the Trainer sections' model
SECTIONS = {  # name -> seconds (the budget includes the process start); train-vision gets what is left
    "pairs-eager": 40,
    "trainer": 95,
    "pairs-compiled": 90,
    "overhead": 55,
    "profile": 20,
    "train-vision": None,
}
TOTAL_S = 355  # the whole run, under 6 minutes
TARGETS = {"mfu": 0.40, "vision_train": 2.5, "vision_infer": 3.0, "torch": 1.05, "zero": 1.10}


def out_default() -> Path:
    name = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"
    return REPORTS / "gpu" / re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")


# ---------------------------------------------------------------------------------------------- settings
class Settings:
    """What every section reads from the command line: device, presets, batches, step counts."""

    def __init__(self, args):
        self.smoke = args.smoke
        self.device = torch.device("cpu" if args.smoke or not torch.cuda.is_available() else "cuda")
        self.amp = "none" if self.device.type == "cpu" else "bf16"
        self.pairs = SMOKE_PAIRS if args.smoke else PAIRS
        self.batch = {**(SMOKE_BATCH if args.smoke else BATCH), **parse_batches(args.batch)}
        self.seq = 32 if args.smoke else None  # text: the model's context unless smoke
        self.lm = "crate-gpt-nano" if args.smoke else LM
        self.warmup, self.repeats = (1, 1) if args.smoke else (args.warmup, args.repeats)
        self.chunk, self.chunks = (2, 1) if args.smoke else (args.chunk, args.chunks)
        self.backend = "eager" if args.smoke else "inductor"  # smoke: dynamo's tracing without code generation


def parse_batches(items: list[str]) -> dict[str, int]:
    out = {}
    for item in items:
        fam, _, n = item.partition("=")
        if fam not in BATCH or not n.isdigit() or int(n) < 1:
            raise SystemExit(f"gpu_readiness: error: --batch {item!r}: expected FAMILY=N with FAMILY one of "
                             f"{list(BATCH)} and N >= 1")
        out[fam] = int(n)
    return out


# ---------------------------------------------------------------------------------------------- pairs
def compile_blocks(model: torch.nn.Module, backend: str) -> int:
    """Compile, in place, every block of every stack in ``model``: the children of an nn.ModuleList or
    nn.Sequential holding at least two modules, all of one class (CRATE's and HF's layer lists, timm's
    ``blocks``), outermost stacks only. Returns how many blocks were compiled."""
    stacks: list[str] = []
    n = 0
    for name, module in model.named_modules():
        if any(name.startswith(s + ".") for s in stacks):
            continue
        if isinstance(module, (torch.nn.ModuleList, torch.nn.Sequential)) and len(module) > 1 \
                and len({type(m) for m in module}) == 1:
            stacks.append(name)
            for block in module:
                block.compile(backend=backend)
                n += 1
    return n


def measure_model(name: str, family: str, st: Settings, compiled: bool) -> dict:
    """Training and inference throughput, MFU and peak memory of ``name`` at the family's batch."""
    from crate_core.train.flops import count_flops, peak_flops

    device = st.device
    torch.manual_seed(0)
    model, fam, cfg = build_family_model(name)
    model.to(device)
    batch, blocks = st.batch[family], 0
    while True:  # inference first: its peak memory holds no gradients or optimizer state
        try:
            seq = context_length(cfg, st.seq)
            case = synthetic_case(model, fam, cfg, batch, seq, device)
            opt = torch.optim.AdamW(model.parameters(), lr=1e-4, foreach=True)

            def train_step(case=case, opt=opt):
                with autocast(device, st.amp):
                    loss = case.loss()
                loss.backward()
                opt.step()
                opt.zero_grad(set_to_none=True)

            def infer(case=case):
                with torch.no_grad(), autocast(device, st.amp):
                    case.infer()

            blocks = compile_blocks(model, st.backend) if compiled and not blocks else blocks
            res = {"model": name, "family": family, "compiled": compiled, "blocks_compiled": blocks,
                   "batch": batch, "unit": f"{case.unit}/s", "params": sum(p.numel() for p in model.parameters())}
            for phase, fn, mode in (("infer", infer, model.eval), ("train", train_step, model.train)):
                mode()
                if phase == "train":  # one real step, counted eagerly (the counter does not see compiled code)
                    with torch.compiler.set_stance("force_eager"):
                        res["train_flops"] = count_flops(train_step)[0]
                reset_peak(device)
                t = time.perf_counter()
                fn()  # the first call (compiles, when compiled)
                sync(device)
                res[f"{phase}_first_call_s"] = time.perf_counter() - t
                s = timed(fn, st.warmup, st.repeats, device)
                res[f"{phase}_ms"] = 1e3 * s
                res[f"{phase}_per_s"] = batch * case.per_sample / s
                res[f"{phase}_peak_gib"] = peak_gib(device)
            peak = peak_flops(device, torch.bfloat16) if device.type == "cuda" else None
            res["mfu"] = res["train_flops"] / (res["train_ms"] / 1e3) / peak if peak else None
            return res
        except torch.OutOfMemoryError:
            if batch == 1:
                raise
            batch //= 2
            print(f"{name}: out of memory, retrying with batch {batch}", file=sys.stderr, flush=True)
            case = opt = train_step = infer = None
            model.zero_grad(set_to_none=True)
            torch.cuda.empty_cache()


def section_pairs(st: Settings, save, compiled: bool) -> None:
    rows = []
    pairs = st.pairs[:1] if st.smoke and compiled else st.pairs  # smoke: the compile path once is enough
    for crate, std, family in pairs:
        for name in (crate, std):
            try:
                rows.append(measure_model(name, family, st, compiled))
            except Exception as e:  # noqa: BLE001  one model's failure is a row, not the end of the section
                rows.append({"model": name, "family": family, "compiled": compiled, "error": f"{type(e).__name__}: {e}"})
            print(json.dumps(rows[-1]), flush=True)
            save({"rows": rows})
            if st.device.type == "cuda":
                torch.cuda.empty_cache()


# ---------------------------------------------------------------------------------------------- trainer
def lm_data(st: Settings, steps: int):
    """(model, dataset) for the Trainer sections: the LM preset and random windows of its context."""
    from torch.utils.data import TensorDataset

    torch.manual_seed(0)
    model, _, cfg = build_family_model(st.lm)
    block = context_length(cfg, st.seq)
    n = st.batch["gpt"] * (steps + 2)
    ids = torch.randint(0, min(cfg.vocab_size, 50257), (n, block + 1), generator=torch.Generator().manual_seed(0))
    return model, TensorDataset(ids[:, :-1], ids[:, 1:]), block


def train_config(st: Settings, out: Path, steps: int, **fields):
    from crate_core.train import TrainConfig

    return TrainConfig(out_dir=str(out), steps=steps, micro_batch=st.batch["gpt"], lr=6e-4, min_lr=6e-5,
                       warmup_steps=2, weight_decay=0.1, log_every=st.chunk, wandb="disabled", progress="off",
                       device=st.device.type, precision="bf16" if st.amp == "bf16" else "fp32", seed=0, **fields)


def trainer_row(model, data, cfg, st: Settings, label: str) -> dict:
    """ms per step of the Trainer (median over chunks after the first) and the MFU of its log rows."""
    from benchmarks.trainer_overhead import trainer_loop

    rows: list[dict] = []
    times = trainer_loop(model, data, None, lm_loss, cfg, st.chunk, rows)
    mfus = [r["mfu"] for r in rows[1:] if r.get("mfu") is not None]
    return {"run": label, "engine": cfg.engine, "zero_stage": cfg.zero_stage if cfg.engine == "deepspeed" else None,
            "compile": cfg.compile, "ms": 1e3 * statistics.median(times), "chunks": len(times),
            "mfu": statistics.median(mfus) if mfus else None}


def section_trainer(st: Settings, save, runs: list[tuple[str, dict]], compile: bool) -> None:
    """The Trainer with each of ``runs`` ((label, TrainConfig fields)), then the bare loop, each on a fresh
    copy of one initial model; ratio = Trainer ms / bare ms. The Trainer runs first: its own figures (MFU)
    are kept even when the budget ends before the bare loop does."""
    from benchmarks.trainer_overhead import bare_loop

    steps = st.chunk * (st.chunks + 1)
    model, data, block = lm_data(st, steps)
    res = {"model": st.lm, "micro_batch": st.batch["gpt"], "context": block, "steps": steps, "chunk": st.chunk,
           "compile": compile, "rows": []}
    with tempfile.TemporaryDirectory(prefix="gpu_readiness_") as tmp:
        for label, fields in runs:
            try:
                cfg = train_config(st, Path(tmp) / label, steps, **fields)
                row = trainer_row(copy.deepcopy(model), data, cfg, st, label)
            except Exception as e:  # noqa: BLE001  a failed engine is a row with its error
                row = {"run": label, "error": f"{type(e).__name__}: {e}"}
            res["rows"].append(row)
            print(json.dumps(row), flush=True)
            save(res)
            free(st.device)
        cfg = train_config(st, Path(tmp) / "bare", steps)
        times = bare_loop(copy.deepcopy(model), data, None, lm_loss, cfg, st.chunk, 0, amp=st.amp, compile=compile)
        res["bare_ms"] = 1e3 * statistics.median(times)
        for row in res["rows"]:
            if "ms" in row:
                row["ratio"] = row["ms"] / res["bare_ms"]
        save(res)


def compile_mode(st: Settings, on: bool) -> str:
    # smoke: the Trainer's --compile uses inductor, which on the CPU needs a C++ toolchain and minutes
    return "on" if on and not st.smoke else "off"


# ---------------------------------------------------------------------------------------------- profile
def kernel_table(prof, device: torch.device, rows: int = 15) -> list[dict]:
    """The top ``rows`` GPU kernels by total GPU time (on the CPU: operators by self CPU time)."""
    events = prof.key_averages()
    if device.type == "cuda":
        kernels = [e for e in events if e.device_type == torch.autograd.DeviceType.CUDA]
        key = lambda e: e.self_device_time_total  # noqa: E731
    else:
        kernels, key = list(events), (lambda e: e.self_cpu_time_total)
    total = sum(key(e) for e in kernels) or 1.0
    top = sorted(kernels, key=key, reverse=True)[:rows]
    return [{"name": e.key, "calls": e.count, "ms": key(e) / 1e3, "share": key(e) / total} for e in top]


def section_profile(st: Settings, save, out: Path) -> None:
    from torch.profiler import ProfilerActivity, profile

    device = st.device
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    vision, lm = st.pairs[0][0], st.lm
    res = {}
    for label, name, family, train in (("crate-b16-infer", vision, "vision", False), ("crate-gpt-train", lm, "gpt", True)):
        torch.manual_seed(0)
        model, fam, cfg = build_family_model(name)
        model.to(device).train(train)
        batch = min(st.batch[family], 64) if family == "vision" else st.batch[family]
        case = synthetic_case(model, fam, cfg, batch, context_length(cfg, st.seq), device)
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4, foreach=True) if train else None

        def step(case=case, opt=opt, train=train):
            if train:
                with autocast(device, st.amp):
                    loss = case.loss()
                loss.backward()
                opt.step()
                opt.zero_grad(set_to_none=True)
            else:
                with torch.no_grad(), autocast(device, st.amp):
                    case.infer()

        for _ in range(2):  # warm: allocator, cuBLAS / SDPA kernel choice
            step()
        sync(device)
        with profile(activities=activities) as prof:
            step()
            sync(device)
        table = kernel_table(prof, device)
        sort = "self_device_time_total" if device.type == "cuda" else "self_cpu_time_total"
        (out / f"profile-{label}.txt").write_text(
            f"{name}, batch {batch}, {'training step' if train else 'inference'}, {st.amp}, eager\n"
            + prof.key_averages().table(sort_by=sort, row_limit=25, max_name_column_width=90))
        res[label] = {"model": name, "batch": batch, "kernels": table}
        save(res)
        del model, case, opt
        free(device)


# ---------------------------------------------------------------------------------------------- train_vision
def section_train_vision(st: Settings, save, out: Path, limit_s: float) -> None:
    """tools/train_vision.py at its defaults (smoke: a few steps), timed from the outside."""
    flags = ["--wandb", "disabled", "--progress", "plain"]
    if st.smoke:
        flags += ["--steps", "2", "--micro-batch", "8", "--train-size", "64", "--eval-size", "32", "--log-every", "1"]
    res = {"command": " ".join(["uv run tools/train_vision.py", *flags]), "limit_s": limit_s}
    save(res)
    with tempfile.TemporaryDirectory(prefix="gpu_readiness_vision_") as tmp:  # the run folder is not kept
        cmd = [sys.executable, "tools/train_vision.py", *flags, "--out-dir", str(Path(tmp) / "run")]
        t = time.perf_counter()
        proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
        res["wall_s"] = time.perf_counter() - t
        res["returncode"] = proc.returncode
        (out / "logs" / "train-vision-tool.log").write_text(proc.stdout + proc.stderr)
        metrics = Path(tmp) / "run" / "metrics.json"
        if proc.returncode == 0 and metrics.is_file():
            m = json.loads(metrics.read_text())
            res.update({k: m.get(k) for k in ("steps", "time_s", "train_time_s", "test/top1")})
        else:
            res["error"] = (proc.stderr or proc.stdout)[-1500:]
    save(res)


# ---------------------------------------------------------------------------------------------- helpers
def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_gib(device: torch.device) -> float | None:
    return torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None


def free(device: torch.device) -> None:
    import gc

    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def run_section(name: str, st: Settings, out: Path, limit_s: float) -> None:
    """Run one section in this process, writing sections/<name>.json after every figure."""
    path = out / "sections" / f"{name}.json"

    def save(obj) -> None:
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(obj, indent=1, default=str))
        tmp.replace(path)

    if name == "pairs-eager":
        section_pairs(st, save, compiled=False)
    elif name == "pairs-compiled":
        section_pairs(st, save, compiled=True)
    elif name == "trainer":
        section_trainer(st, save, [("trainer-torch", dict(engine="torch", compile=compile_mode(st, True)))],
                        compile=compile_mode(st, True) == "on")
    elif name == "overhead":
        runs = [("trainer-torch", dict(engine="torch", compile="off"))]
        runs += [(f"trainer-zero{z}", dict(engine="deepspeed", zero_stage=z, compile="off")) for z in (1, 2)]
        section_trainer(st, save, runs, compile=False)
    elif name == "profile":
        section_profile(st, save, out)
    elif name == "train-vision":
        section_train_vision(st, save, out, limit_s)
    else:
        raise ValueError(f"unknown section {name!r}; choose from {list(SECTIONS)}")


# ---------------------------------------------------------------------------------------------- driver
def launch(name: str, argv: list[str], out: Path, limit_s: float) -> dict:
    """Run section ``name`` in a child process for at most ``limit_s`` seconds (then its process group is
    killed); its output goes to logs/<name>.log."""
    cmd = [sys.executable, "-m", "benchmarks.gpu_readiness", *argv, "--out", str(out), "--section", name,
           "--section-limit", f"{limit_s:.0f}"]
    env = dict(os.environ)
    if "--smoke" in argv:  # the CPU alone, DeepSpeed included, even on a machine with a GPU
        env.update(CUDA_VISIBLE_DEVICES="", DS_ACCELERATOR="cpu")
    t = time.perf_counter()
    with open(out / "logs" / f"{name}.log", "w") as log:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            rc = proc.wait(timeout=limit_s)
            status = "done" if rc == 0 else f"failed (exit {rc}; see logs/{name}.log)"
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)  # the section and its compile workers
            proc.wait()
            status = f"stopped at its {limit_s:.0f} s budget (partial)"
    return {"status": status, "seconds": time.perf_counter() - t, "limit_s": limit_s}


def gather(out: Path, env: dict, status: dict) -> dict:
    res = {"env": env, "sections": status}
    for name in SECTIONS:
        path = out / "sections" / f"{name}.json"
        if path.is_file():
            res[name] = json.loads(path.read_text())
    return res


def targets(res: dict, st: Settings) -> list[tuple[str, str, str]]:
    """(target, figure, verdict) per target; verdict "met", "not met" or "not measured"."""
    lines = []

    def verdict(ok):
        return "not measured" if ok is None else ("met" if ok else "not met")

    tr = next((r for r in res.get("trainer", {}).get("rows", []) if "error" not in r), None)
    mfu = tr.get("mfu") if tr else None
    lines.append((f"{st.lm} >= {TARGETS['mfu']:.0%} MFU through the Trainer (bf16, compiled)",
                  f"{mfu:.1%}" if mfu is not None else "-", verdict(None if mfu is None else mfu >= TARGETS["mfu"])))
    crate, std = st.pairs[0][0], st.pairs[0][1]
    for section, how in (("pairs-eager", "eager"), ("pairs-compiled", "compiled")):
        rows = {r["model"]: r for r in res.get(section, {}).get("rows", []) if "error" not in r}
        for phase, key in (("train", "vision_train"), ("infer", "vision_infer")):
            a, b = rows.get(crate), rows.get(std)
            ratio = a[f"{phase}_per_s"] / b[f"{phase}_per_s"] if a and b else None
            word = "training" if phase == "train" else "inference"
            lines.append((f"{crate} >= {TARGETS[key]}x {std} {word} img/s, {how}",
                          f"{ratio:.2f}x" if ratio else "-", verdict(None if ratio is None else ratio >= TARGETS[key])))
    rows = {r["run"]: r for r in res.get("overhead", {}).get("rows", []) if "error" not in r}
    for run, label, key in (("trainer-torch", "torch engine", "torch"), ("trainer-zero1", "ZeRO-1", "zero"),
                            ("trainer-zero2", "ZeRO-2", "zero")):
        ratio = rows.get(run, {}).get("ratio")
        lines.append((f"Trainer step <= {TARGETS[key]:.2f}x the bare step, {label} (eager)",
                      f"{ratio:.3f}x" if ratio else "-", verdict(None if ratio is None else ratio <= TARGETS[key])))
    return lines


def fmt(v, spec: str = ",.0f", none: str = "-") -> str:
    return none if v is None else format(v, spec)


def scorecard(res: dict, st: Settings) -> str:
    env = res["env"]
    lines = [f"# GPU scorecard: {env['device']}", "",
             f"torch {env['torch']}, CUDA {env['cuda']}, {env['amp']} autocast; {env['date']}; commit {env['commit']}; "
             f"budget {env['budget_s']} s, elapsed {env.get('elapsed_s', 0):.0f} s.", "",
             "## Targets", "", "| target | figure | verdict |", "|---|---:|---|"]
    lines += [f"| {t} | {f} | **{v}** |" for t, f, v in targets(res, st)]
    lines += ["", "## Sections", "", "| section | status | seconds | budget |", "|---|---|---:|---:|"]
    lines += [f"| {n} | {s['status']} | {s['seconds']:.0f} | {s['limit_s']:.0f} |" for n, s in res["sections"].items()]
    for section, how in (("pairs-eager", "eager"), ("pairs-compiled", "compiled (regional)")):
        rows = res.get(section, {}).get("rows", [])
        if not rows:
            continue
        lines += ["", f"## Pairs, {how}", "",
                  "| model | batch | train | train ms | MFU | infer | train peak GiB | infer peak GiB | first call s (train) |",
                  "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for r in rows:
            if "error" in r:
                lines.append(f"| {r['model']} | failed: {r['error'][:200]} |||||||")
                continue
            lines.append(f"| {r['model']} | {r['batch']} | {fmt(r['train_per_s'])} {r['unit']} | {r['train_ms']:.1f} "
                         f"| {fmt(r['mfu'], '.1%')} | {fmt(r['infer_per_s'])} {r['unit']} | {fmt(r['train_peak_gib'], '.1f')} "
                         f"| {fmt(r['infer_peak_gib'], '.1f')} | {r['train_first_call_s']:.1f} |")
        by = {r["model"]: r for r in rows if "error" not in r}
        lines += ["", "| CRATE | standard | train speed-up | infer speed-up | MFU ratio |", "|---|---|---:|---:|---:|"]
        for crate, std, _ in st.pairs:
            a, b = by.get(crate), by.get(std)
            if a and b:
                mfu = f"{a['mfu'] / b['mfu']:.2f}" if a["mfu"] and b["mfu"] else "-"
                lines.append(f"| {crate} | {std} | {a['train_per_s'] / b['train_per_s']:.2f}x "
                             f"| {a['infer_per_s'] / b['infer_per_s']:.2f}x | {mfu} |")
    for section, title in (("trainer", "Trainer vs the bare loop, compiled"), ("overhead", "Trainer vs the bare loop, eager")):
        t = res.get(section)
        if not t:
            continue
        bare = f"{t['bare_ms']:.1f} ms" if "bare_ms" in t else "not finished"
        lines += ["", f"## {title}", "",
                  f"{t['model']}, micro-batch {t['micro_batch']} x {t['context']} tokens, {t['steps']} steps, median ms "
                  f"per step over chunks of {t['chunk']} after the first; the bare loop: {bare}.", "",
                  "| run | engine | ZeRO | ms / step | Trainer / bare | MFU |", "|---|---|---:|---:|---:|---:|"]
        for r in t["rows"]:
            if "error" in r:
                lines.append(f"| {r['run']} | failed: {r['error'][:200]} |||||")
            else:
                lines.append(f"| {r['run']} | {r['engine']} | {fmt(r['zero_stage'], 'd')} | {r['ms']:.1f} "
                             f"| {fmt(r.get('ratio'), '.3f')}x | {fmt(r['mfu'], '.1%')} |")
    tv = res.get("train-vision")
    if tv:
        lines += ["", "## tools/train_vision.py (its defaults)", "", f"`{tv['command']}`: "
                  + (f"{tv['wall_s']:.0f} s wall ({tv.get('steps')} steps, trainer {tv.get('train_time_s')} s, "
                     f"held-out top-1 {fmt(tv.get('test/top1'), '.4f')})." if "wall_s" in tv and "error" not in tv
                     else f"not finished within its {tv['limit_s']:.0f} s" if "wall_s" not in tv
                     else f"failed: {tv['error'][-300:]}")]
    prof = res.get("profile", {})
    for label, p in prof.items():
        lines += ["", f"## Kernels: {p['model']} ({label}, batch {p['batch']}; full table in profile-{label}.txt)", "",
                  "| kernel | calls | ms | share |", "|---|---:|---:|---:|"]
        lines += [f"| `{k['name'][:90]}` | {k['calls']} | {k['ms']:.2f} | {k['share']:.1%} |" for k in p["kernels"]]
    return "\n".join(lines) + "\n"


def environment(st: Settings, budget: float) -> dict:
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True)
    return {"device": device_name(st.device), "gpus": torch.cuda.device_count(), "torch": torch.__version__,
            "cuda": torch.version.cuda, "amp": st.amp, "smoke": st.smoke, "budget_s": budget,
            "commit": commit.stdout.strip() or "unknown", "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
            "batch": st.batch, "warmup": st.warmup, "repeats": st.repeats}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=None, help="output folder (default: benchmarks/reports/gpu/<gpu-name>)")
    p.add_argument("--smoke", action="store_true", help="CPU: tiny presets, batch 2, a few steps (checks the script)")
    p.add_argument("--only", nargs="+", choices=list(SECTIONS), default=None, help="run these sections only")
    p.add_argument("--budget", type=float, default=None, help=f"seconds for the whole run (default {TOTAL_S}; smoke 900)")
    p.add_argument("--batch", action="append", default=[], metavar="FAMILY=N",
                   help=f"samples per step for a family (default {BATCH})")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--chunk", type=int, default=10, help="Trainer sections: steps per timed chunk")
    p.add_argument("--chunks", type=int, default=3, help="Trainer sections: timed chunks after a warm-up chunk")
    p.add_argument("--section", choices=list(SECTIONS), help=argparse.SUPPRESS)  # a child: run one section
    p.add_argument("--section-limit", type=float, default=0.0, help=argparse.SUPPRESS)
    return p


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    for flag in ("warmup", "chunks"):
        if getattr(args, flag) < (0 if flag == "warmup" else 1):
            raise SystemExit(f"gpu_readiness: error: --{flag} is too small: {getattr(args, flag)}")
    if args.repeats < 1 or args.chunk < 1:
        raise SystemExit("gpu_readiness: error: --repeats and --chunk must be >= 1")
    if not args.smoke and not torch.cuda.is_available():
        print("gpu_readiness: no CUDA GPU is visible (torch.cuda.is_available() is False): nothing to measure on "
              "this machine; run it where a GPU is, or pass --smoke to check the script on the CPU.")
        return 0
    st = Settings(args)
    out = args.out or (REPORTS / "gpu" / "smoke-cpu" if args.smoke else out_default())
    if args.section:  # a child process
        run_section(args.section, st, out, args.section_limit)
        return 0
    budget = args.budget or (900.0 if args.smoke else float(TOTAL_S))
    for sub in ("sections", "logs"):
        (out / sub).mkdir(parents=True, exist_ok=True)
    child_argv = [a for i, a in enumerate(argv) if not _is_driver_arg(argv, i)]
    env = environment(st, budget)
    names = args.only or list(SECTIONS)
    for name in names:  # an earlier run's figures for a section that runs now must not linger
        (out / "sections" / f"{name}.json").unlink(missing_ok=True)
    status: dict = {}
    t0 = time.perf_counter()
    for name in names:
        left = budget - (time.perf_counter() - t0)
        share = SECTIONS[name]
        if share is None or len(names) == 1:  # train-vision, or a section run alone: all that is left
            limit = left
        else:  # the smoke run's budget is scaled from the GPU run's
            limit = min(left, share * budget / TOTAL_S if args.smoke else share)
        if limit < 5:
            status[name] = {"status": "skipped: no time left", "seconds": 0.0, "limit_s": max(limit, 0.0)}
        else:
            print(f"[gpu_readiness] {name}: up to {limit:.0f} s", flush=True)
            status[name] = launch(name, child_argv, out, limit)
            print(f"[gpu_readiness] {name}: {status[name]['status']} in {status[name]['seconds']:.0f} s", flush=True)
        env["elapsed_s"] = time.perf_counter() - t0
        res = gather(out, env, status)
        (out / "results.json").write_text(json.dumps(res, indent=2, default=str))
        (out / "scorecard.md").write_text(scorecard(res, st))
    print((out / "scorecard.md").read_text())
    print(f"[gpu_readiness] wrote {out / 'scorecard.md'} and results.json in {time.perf_counter() - t0:.0f} s")
    return 0


def _is_driver_arg(argv: list[str], i: int) -> bool:
    """Whether argv[i] belongs to an option only the driver reads (--out, --only, --budget and their values)."""
    driver = ("--out", "--only", "--budget")
    if argv[i].startswith("--"):
        return argv[i].split("=")[0] in driver
    j = i - 1
    while j >= 0 and not argv[j].startswith("--"):
        j -= 1
    return j >= 0 and argv[j] in driver and "=" not in argv[j]


if __name__ == "__main__":
    sys.exit(main())
