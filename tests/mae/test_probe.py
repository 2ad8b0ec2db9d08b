"""Linear probe: it solves a separable toy set, beats chance through a frozen encoder, and the
ViT-MAE baseline shares the interface."""

import crate_core
import pytest
import torch
from crate_mae.probe import extract_features, fit_logistic, linear_probe
from torch.utils.data import TensorDataset


def _blobs(n, seed, classes=4, dim=10):
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(classes, dim, generator=torch.Generator().manual_seed(123)) * 4
    y = torch.arange(n) % classes
    return centres[y] + torch.randn(n, dim, generator=g), y


def test_probe_separates_gaussian_blobs():
    res = linear_probe(_blobs(400, 0), _blobs(400, 1), val=_blobs(200, 2))
    assert res["test_acc"] > 0.95 and res["l2"] in (1e-4, 1e-3, 1e-2, 1e-1, 1.0)


def test_logistic_fit_reaches_the_optimum():
    """At the optimum of the convex objective the gradient vanishes."""
    X, y = _blobs(200, 3)
    fit = fit_logistic(X, y, l2=1e-2)
    W = fit.weight.double().requires_grad_()
    b = fit.bias.double().requires_grad_()
    Xs = ((X - fit.mean) / fit.std).double()
    loss = torch.nn.functional.cross_entropy(Xs @ W.T + b, y) + 0.5 * 1e-2 * W.pow(2).sum()
    gW, gb = torch.autograd.grad(loss, (W, b))
    assert gW.abs().max() < 1e-4 and gb.abs().max() < 1e-4


def _colour_images(n, seed):
    """Class c = which colour channel is brightest, plus noise: separable from pixel statistics."""
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % 3
    x = torch.randn(n, 3, 32, 32, generator=g) * 0.5
    x[torch.arange(n), y] += 1.5
    return TensorDataset(x, y)


@pytest.mark.parametrize("name", ["crate-mae-tiny-test", "vit-mae-tiny-test"])
def test_frozen_encoder_probe_beats_chance(name):
    torch.manual_seed(0)
    model = crate_core.create(name)
    train = extract_features(model, _colour_images(240, 0), pool="mean")
    test = extract_features(model, _colour_images(120, 1), pool="mean")
    assert train[0].shape == (240, 64)
    assert linear_probe(train, test)["test_acc"] > 0.8  # chance is 1/3


def test_probe_bad_input():
    with pytest.raises(ValueError, match="X must be"):
        fit_logistic(torch.randn(5, 3), torch.zeros(4, dtype=torch.long))
