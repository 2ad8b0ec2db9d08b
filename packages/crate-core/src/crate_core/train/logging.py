"""Run logging, rank 0 only: wandb (offline unless told otherwise), a progress bar on a terminal,
otherwise one plain line per log interval."""

from __future__ import annotations

import math
import os
import sys
from pathlib import Path

from tqdm.auto import tqdm


def format_metrics(metrics: dict) -> str:
    parts = []
    for key, value in metrics.items():
        if key == "step" or value is None:
            continue
        if isinstance(value, float):
            if key == "lr":
                parts.append(f"{key} {value:.3e}")
            elif key == "mfu":
                parts.append(f"{key} {100 * value:.1f}%")
            elif abs(value) >= 1000 or not math.isfinite(value):
                parts.append(f"{key} {value:.4g}")
            else:
                parts.append(f"{key} {value:.4f}")
        else:
            parts.append(f"{key} {value}")
    return " | ".join(parts)


class RunLogger:
    """``log(step, metrics)`` on every rank; only rank 0 writes anything."""

    SHOWN = ("loss", "lr", "grad_norm", "samples_per_s", "tokens_per_s", "mfu")

    def __init__(
        self,
        is_main: bool,
        total_steps: int,
        start_step: int,
        out_dir: Path,
        mode: str,
        project: str,
        run_name: str | None,
        config: dict,
        progress: str = "auto",
    ):
        self.is_main = is_main
        self.run = None
        self.bar = None
        if not is_main:
            return
        mode = os.environ.get("WANDB_MODE", mode) if mode != "disabled" else "disabled"
        if mode != "disabled":
            import wandb

            out_dir.mkdir(parents=True, exist_ok=True)
            self.run = wandb.init(
                project=project,
                name=run_name,
                dir=str(out_dir),
                mode=mode,
                config=config,
                resume="allow",
                id=_run_id(out_dir, run_name),
            )
        use_bar = progress == "bar" or (progress == "auto" and sys.stdout.isatty())
        self.plain = progress != "off" and not use_bar
        if use_bar:
            self.bar = tqdm(total=total_steps, initial=start_step, dynamic_ncols=True, desc="train")

    def log(self, step: int, metrics: dict, advance: int = 0) -> None:
        if not self.is_main:
            return
        if self.run is not None:
            self.run.log({k: v for k, v in metrics.items() if k != "step" and v is not None}, step=step)
        if self.bar is not None:
            self.bar.update(advance)
            shown = {k: metrics[k] for k in self.SHOWN if metrics.get(k) is not None}
            if shown:
                self.bar.set_postfix_str(format_metrics(shown), refresh=True)
            evals = {k: v for k, v in metrics.items() if k.startswith("eval/")}
            if evals:
                self.bar.write(f"step {step} | " + format_metrics(evals))
        elif self.plain:
            print(f"step {step} | " + format_metrics(metrics), flush=True)

    def log_quiet(self, step: int, metrics: dict) -> None:
        """To wandb only (no progress line): for many-valued measurements."""
        if self.is_main and self.run is not None:
            self.run.log(metrics, step=step)

    def message(self, text: str) -> None:
        if not self.is_main:
            return
        if self.bar is not None:
            self.bar.write(text)
        else:
            print(text, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
        if self.run is not None:
            self.run.finish()
            self.run = None


def _run_id(out_dir: Path, run_name: str | None) -> str:
    """A stable wandb id per run directory, so a resumed run continues the same wandb run."""
    id_file = out_dir / "wandb_run_id.txt"
    if id_file.is_file():
        return id_file.read_text().strip()
    import secrets

    run_id = secrets.token_hex(4)
    id_file.write_text(run_id)
    return run_id
