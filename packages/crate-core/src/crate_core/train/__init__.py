"""The shared trainer: DeepSpeed ZeRO 0-3 on CPU (gloo) or GPU (nccl), exact resume, atomic checkpoints.

from crate_core.train import TrainConfig, Trainer, add_train_args, train_config_from_args
parser = argparse.ArgumentParser(); add_train_args(parser, steps=300, micro_batch=32, lr=1e-3)
cfg = train_config_from_args(parser.parse_args())
trainer = Trainer(cfg, model, train_dataset, loss_fn=loss_fn, eval_dataset=val_dataset)
result = trainer.fit()
if trainer.is_main: trainer.export(out_dir / "final")
"""

from .checkpoint import list_checkpoints, resolve_resume
from .config import TrainConfig, add_train_args, build_ds_config, train_config_from_args
from .trainer import NonFiniteLossError, Trainer, WarmupCosine, model_fingerprint, seed_everything

__all__ = [
    "TrainConfig",
    "Trainer",
    "add_train_args",
    "train_config_from_args",
    "build_ds_config",
    "NonFiniteLossError",
    "WarmupCosine",
    "seed_everything",
    "model_fingerprint",
    "list_checkpoints",
    "resolve_resume",
]
