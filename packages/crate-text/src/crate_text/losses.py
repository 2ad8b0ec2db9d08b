"""Language-model losses: the cross-entropies the models compute, and the trainer loss functions
(``loss_fn(model, batch) -> (loss, metrics)``) the text tools use, chosen by registry task.

    causal LM:  L = mean over positions t with y_t != -1   of  -log softmax(logits_t)[y_t]
    masked LM:  L = mean over positions t with y_t != -100 of  -log softmax(logits_t)[y_t]

Logits are cast to float32 before the softmax so bf16/fp16 training keeps an exact loss.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

CAUSAL_IGNORE = -1  # target of a position without a next token (TokenDataset never emits it)
MASKED_IGNORE = -100  # label of a position that was not chosen for masking


def token_cross_entropy(logits: torch.Tensor, targets: torch.Tensor, ignore_index: int) -> torch.Tensor:
    """Mean cross-entropy of logits (..., V) against integer targets (...), skipping ``ignore_index``."""
    return F.cross_entropy(logits.flatten(0, -2).float(), targets.flatten(), ignore_index=ignore_index)


def causal_lm_cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Next-token cross-entropy; targets equal to -1 are ignored."""
    return token_cross_entropy(logits, targets, CAUSAL_IGNORE)


def masked_lm_cross_entropy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Masked-token cross-entropy; labels equal to -100 are ignored."""
    return token_cross_entropy(logits, labels, MASKED_IGNORE)


def causal_lm_loss(model, batch) -> tuple[torch.Tensor, dict]:
    """Trainer loss_fn for (x, y) windows: the model's next-token loss, and the token count."""
    x, y = batch
    _, loss = model(x, y)
    return loss, {"tokens": x.numel()}


def masked_lm_loss(model, batch) -> tuple[torch.Tensor, dict]:
    """Trainer loss_fn for (inputs, labels): the masked-token loss and the accuracy on chosen tokens."""
    inputs, labels = batch
    logits, loss = model(inputs, labels=labels)
    chosen = labels != MASKED_IGNORE
    acc = (logits.argmax(-1)[chosen] == labels[chosen]).float().mean()
    return loss, {"accuracy": acc, "tokens": inputs.numel()}


LOSSES = {"causal-lm": causal_lm_loss, "masked-lm": masked_lm_loss}
"""Registry task -> trainer loss function."""
