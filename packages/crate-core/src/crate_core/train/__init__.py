"""The shared trainer: a plain torch loop for one process, DeepSpeed ZeRO 0-3 for several (gloo on CPU,
nccl on GPU), exact resume, atomic verified checkpoints, protected run folders.

from crate_core.train import TrainConfig, Trainer, add_train_args, train_config_from_args
parser = argparse.ArgumentParser(); add_train_args(parser, steps=300, micro_batch=32, lr=1e-3)
cfg = train_config_from_args(parser.parse_args())
trainer = Trainer(cfg, model, train_dataset, loss_fn=loss_fn, eval_dataset=val_dataset)
result = trainer.fit()
if trainer.is_main: trainer.export(out_dir / "final")
"""

from .checkpoint import (
    DamagedCheckpointError,
    DiskFullError,
    list_checkpoints,
    resolve_resume,
    verify_checkpoint,
)
from .config import TrainConfig, add_train_args, train_config_from_args
from .ds_config import build_ds_config
from .interrupt import TrainingAborted, TrainingInterrupted
from .runlock import RunFolderBusyError
from .trainer import NonFiniteLossError, Trainer, WarmupCosine, model_fingerprint, seed_everything

__all__ = [
    "TrainConfig",
    "Trainer",
    "add_train_args",
    "train_config_from_args",
    "build_ds_config",
    "NonFiniteLossError",
    "TrainingInterrupted",
    "TrainingAborted",
    "RunFolderBusyError",
    "DamagedCheckpointError",
    "DiskFullError",
    "verify_checkpoint",
    "WarmupCosine",
    "seed_everything",
    "model_fingerprint",
    "list_checkpoints",
    "resolve_resume",
]
