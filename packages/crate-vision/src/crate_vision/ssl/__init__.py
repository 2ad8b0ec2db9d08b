"""Self-supervised training of any registered vision backbone: DINO and SimDINO.

    multicrop      MultiCrop / BatchMultiCrop: 2 global + N local crops (DINO's scales), per image (torchvision
                   transforms v2) or per batch (kornia)
    heads          Projector (MLP + L2 norm, SimDINO) and DINOHead (+ weight-normalised prototypes)
    dino_loss      DINOLoss: centred, sharpened teacher vs student cross-entropy
    simdino_loss   SimDINOLoss: cosine compression + coding-rate expansion (the official MCRLoss's terms)
    distill        SelfDistillation: student, EMA teacher, heads and loss in one module; SSLConfig
    knn            weighted k-NN on frozen features (DINO's protocol)
    train          pretrain() on crate_core.train.Trainer and the teacher export
"""

from .dino_loss import DINOLoss
from .distill import METHODS, SelfDistillation, SSLConfig, momentum_at, pooled_features
from .heads import DINOHead, Projector
from .knn import extract, knn_accuracy, knn_scores
from .multicrop import BatchMultiCrop, MultiCrop, MultiCropDataset, crop_sizes
from .simdino_loss import SimDINOLoss

__all__ = [
    "BatchMultiCrop", "DINOHead", "DINOLoss", "METHODS", "MultiCrop", "MultiCropDataset", "Projector", "SSLConfig",
    "SelfDistillation", "SimDINOLoss", "crop_sizes", "extract", "knn_accuracy", "knn_scores", "momentum_at", "pooled_features",
]
