"""The released CBT classifier written out from the paper's equations and the released code's behaviour
(QishuaiWen/CBSA ``CBSA_image_classification/models.py`` and ``attn_layers.py``), on a state dict in the
released layout; nothing here calls crate_vision or crate_core. Used by tests/vision/test_cbt*.py.

    stem     x <- BN_eval(conv3x3_s2(x)) per stage, GELU between stages (not after the last)
    tokens   [cls; flattened grid] + pos_embedding
    layer    y = LN(z); w = y P^T; q = 8x8 adaptive average pool of the window laid out on the grid
             A = softmax_N(q w^T / sqrt p); q' = q + step_rep A w; D = softmax(q' q'^T / sqrt p) q'
             z_half = z + to_out(concat_k step_x A^T D)
             u = LN(z_half); z_next = ReLU(u + 0.1 (u W - (u W^T) W) - 0.1 * 0.1)
    head     mlp_head.1(LN(z[:, 0]))
The released window is ``w[:, :-1]`` (class token first, so the class token is pooled and the last patch
is not), on a side of int(sqrt(n)) with n counting the class token; ``window="patches"`` pools the patch
tokens instead (then any grid works).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

STEM = "to_patch_embedding.proj"
BN_EPS = LN_EPS = 1e-5


def layer_norm(x, state, prefix):
    mean = x.mean(-1, keepdim=True)
    var = ((x - mean) ** 2).mean(-1, keepdim=True)
    return (x - mean) / torch.sqrt(var + LN_EPS) * state[f"{prefix}.weight"] + state[f"{prefix}.bias"]


def adaptive_pool(grid_tokens: torch.Tensor, m: int) -> torch.Tensor:
    """(B, h, w, C) -> (B, m*m, C): cell (a, c) averages rows [floor(a h/m), ceil((a+1) h/m)) and
    columns [floor(c w/m), ceil((c+1) w/m)), cells in row-major order."""
    _, h, w, _ = grid_tokens.shape
    cells = []
    for a in range(m):
        rows = slice(math.floor(a * h / m), math.ceil((a + 1) * h / m))
        for c in range(m):
            cols = slice(math.floor(c * w / m), math.ceil((c + 1) * w / m))
            cells.append(grid_tokens[:, rows, cols].mean(dim=(1, 2)))
    return torch.stack(cells, dim=1)


def stages(state) -> int:
    return sum(1 for k in state if k.startswith(STEM) and k.endswith(".0.weight"))


def released_forward(state, img, heads, window="released", grid=None, rep_grid=8, pos=None):
    """Logits of the released CBT for images ``img``. ``grid`` (h, w) of patches (default: the released
    side int(sqrt(n))); ``pos`` replaces pos_embedding (a resized table)."""
    x = img
    s = stages(state)
    for i in range(s):
        pre = f"{STEM}.{2 * i}"
        x = F.conv2d(x, state[f"{pre}.0.weight"], stride=2, padding=1)
        mean, var = state[f"{pre}.1.running_mean"], state[f"{pre}.1.running_var"]
        x = (x - mean[:, None, None]) / torch.sqrt(var[:, None, None] + BN_EPS)
        x = x * state[f"{pre}.1.weight"][:, None, None] + state[f"{pre}.1.bias"][:, None, None]
        if i < s - 1:
            x = F.gelu(x)
    z = x.flatten(2).transpose(1, 2)
    b = z.shape[0]
    z = torch.cat([state["cls_token"].expand(b, -1, -1), z], dim=1)
    z = z + (state["pos_embedding"] if pos is None else pos)
    n = z.shape[1]
    depth = len({k.split(".")[2] for k in state if k.startswith("transformer.layers.")})
    for layer in range(depth):
        pre = f"transformer.layers.{layer}"
        y = layer_norm(z, state, f"{pre}.0.norm")
        w = y @ state[f"{pre}.0.fn.proj.weight"].T  # (B, N, C)
        C = w.shape[-1]
        p = C // heads
        if window == "released":
            side = int(n**0.5)
            win = w[:, :-1].reshape(b, side, side, C)
        else:
            gh, gw = grid
            win = w[:, n - gh * gw :].reshape(b, gh, gw, C)
        q = adaptive_pool(win, rep_grid)
        wh = w.reshape(b, n, heads, p).permute(0, 2, 1, 3)  # (B, K, N, p)
        qh = q.reshape(b, rep_grid**2, heads, p).permute(0, 2, 1, 3)  # (B, K, M, p)
        A = torch.softmax(qh @ wh.transpose(-1, -2) / math.sqrt(p), dim=-1)  # (B, K, M, N)
        q2 = qh + state[f"{pre}.0.fn.step_rep"] * (A @ wh)
        D = torch.softmax(q2 @ q2.transpose(-1, -2) / math.sqrt(p), dim=-1) @ q2
        o = state[f"{pre}.0.fn.step_x"] * (A.transpose(-1, -2) @ D)  # (B, K, N, p)
        o = o.permute(0, 2, 1, 3).reshape(b, n, C)
        z = z + o @ state[f"{pre}.0.fn.to_out.weight"].T + state[f"{pre}.0.fn.to_out.bias"]
        u = layer_norm(z, state, f"{pre}.1.norm")
        W = state[f"{pre}.1.fn.weight"]
        z = torch.relu(u + 0.1 * (u @ W - (u @ W.T) @ W) - 0.1 * 0.1)
    cls = layer_norm(z[:, 0], state, "mlp_head.0")
    return cls @ state["mlp_head.1.weight"].T + state["mlp_head.1.bias"]


def released_state(dim, depth, heads, classes=1000, patch=16, image=224, seed=0) -> dict[str, torch.Tensor]:
    """Random weights in the released layout (as ``Ours_tiny(...).state_dict()`` names them)."""
    g = torch.Generator().manual_seed(seed)

    def randn(*shape, scale=1.0):
        return torch.randn(*shape, generator=g) * scale

    state = {}
    n_stages = int(math.log2(patch))
    widths = [3] + [dim // 2 ** (n_stages - 1 - i) for i in range(n_stages)]
    for i, (a, c) in enumerate(zip(widths, widths[1:])):
        pre = f"{STEM}.{2 * i}"
        state[f"{pre}.0.weight"] = randn(c, a, 3, 3, scale=math.sqrt(2 / (9 * a)))
        state[f"{pre}.1.weight"] = 1 + randn(c, scale=0.1)
        state[f"{pre}.1.bias"] = randn(c, scale=0.1)
        state[f"{pre}.1.running_mean"] = randn(c, scale=0.1)
        state[f"{pre}.1.running_var"] = 0.5 + torch.rand(c, generator=g)
        state[f"{pre}.1.num_batches_tracked"] = torch.tensor(1000)
    grid = image // patch
    state["pos_embedding"] = randn(1, grid * grid + 1, dim)
    state["cls_token"] = randn(1, 1, dim)
    for layer in range(depth):
        pre = f"transformer.layers.{layer}"
        for norm in (f"{pre}.0.norm", f"{pre}.1.norm"):
            state[f"{norm}.weight"] = 1 + randn(dim, scale=0.1)
            state[f"{norm}.bias"] = randn(dim, scale=0.1)
        state[f"{pre}.0.fn.proj.weight"] = randn(dim, dim, scale=dim**-0.5)
        state[f"{pre}.0.fn.step_x"] = randn(heads, 1, 1)
        state[f"{pre}.0.fn.step_rep"] = randn(heads, 1, 1)
        state[f"{pre}.0.fn.to_out.weight"] = randn(dim, dim, scale=dim**-0.5)
        state[f"{pre}.0.fn.to_out.bias"] = randn(dim, scale=0.1)
        state[f"{pre}.1.fn.weight"] = (torch.rand(dim, dim, generator=g) * 2 - 1) * math.sqrt(6 / dim)
    state["mlp_head.0.weight"] = 1 + randn(dim, scale=0.1)
    state["mlp_head.0.bias"] = randn(dim, scale=0.1)
    state["mlp_head.1.weight"] = randn(classes, dim, scale=dim**-0.5)
    state["mlp_head.1.bias"] = randn(classes, scale=0.1)
    return state
