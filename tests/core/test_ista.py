"""ISTA blocks against the column-form formulas of DESIGN.md / crate-family.md (core_formulas)."""

import pytest
import torch
from core_formulas import decode_column, ista_alpha_codes_column, ista_lm_codes_column, ista_square_column
from crate_core import ISTA, OvercompleteISTA
from torch.utils.flop_counter import FlopCounterMode

DIM = 6
OVERCOMPLETE = dict(ratio=4, steps=2, step_size=0.1, lambd=0.1, tied=False)


def tokens(*shape, seed=0):
    torch.manual_seed(seed)
    return torch.randn(*shape, DIM, dtype=torch.float64)


@pytest.mark.parametrize("eta,lambd", [(0.1, 0.1), (0.3, 0.05)])
def test_square_ista_matches_column_formula(eta, lambd):
    torch.manual_seed(0)
    block = ISTA(DIM, step_size=eta, lambd=lambd).double()
    u = tokens(2, 5)
    with torch.no_grad():
        got = block(u)
        want = ista_square_column(u, block.D, eta, lambd)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    assert (got == 0).any() and (got > 0).any()  # the threshold is active on this input
    torch.testing.assert_close(block.codes(u), got)


def test_square_ista_any_leading_dims():
    torch.manual_seed(0)
    block = ISTA(DIM, step_size=0.1, lambd=0.1).double()
    u = tokens(7)
    with torch.no_grad():
        torch.testing.assert_close(block(u), ista_square_column(u, block.D, 0.1, 0.1), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("steps", [1, 2, 3])
def test_alpha_codes_and_decoder_match_column_formula(steps):
    torch.manual_seed(0)
    block = OvercompleteISTA(DIM, ratio=4, steps=steps, step_size=0.2, lambd=0.1, tied=False).double()
    assert block.D.shape == (DIM, 4 * DIM) and block.D1.shape == (DIM, 4 * DIM)
    u = tokens(2, 5)
    with torch.no_grad():
        a = block.codes(u)
        out = block(u)
        want_a = ista_alpha_codes_column(u, block.D, 0.2, 0.1, steps)
        want_out = decode_column(want_a, block.D1)  # decoupled decoder D1
    torch.testing.assert_close(a, want_a, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(out, want_out, rtol=1e-12, atol=1e-12)
    assert (a == 0).any() and (a > 0).any()


def test_lm_block_is_tied_and_matches_crate_lm_formula():
    torch.manual_seed(0)
    block = OvercompleteISTA(DIM, ratio=4, steps=2, step_size=0.1, lambd=0.1, tied=True).double()
    assert block.D1 is None
    u = tokens(2, 5)
    with torch.no_grad():
        want_a = ista_lm_codes_column(u, block.D, 0.1, 0.1)
        torch.testing.assert_close(block.codes(u), want_a, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(block(u), decode_column(want_a, block.D), rtol=1e-12, atol=1e-12)


def test_bad_arguments_are_value_errors():
    with pytest.raises(ValueError, match="step_size"):
        ISTA(DIM, step_size=0.0, lambd=0.1)
    with pytest.raises(ValueError, match="lambd"):
        OvercompleteISTA(DIM, **{**OVERCOMPLETE, "lambd": -1.0})
    with pytest.raises(ValueError, match="ratio"):
        OvercompleteISTA(DIM, **{**OVERCOMPLETE, "ratio": 0})
    with pytest.raises(ValueError, match="last dimension 6"):
        ISTA(DIM, step_size=0.1, lambd=0.1)(torch.randn(3, 5))
    with pytest.raises(ValueError, match="last dimension 6"):
        OvercompleteISTA(DIM, **OVERCOMPLETE)(torch.randn(3, 5))
    with pytest.raises(TypeError, match="lambd"):  # no default that could disagree with TrunkConfig's
        ISTA(DIM, step_size=0.1)


def test_square_ista_gradcheck():
    torch.manual_seed(2)
    block = ISTA(4, step_size=0.3, lambd=0.05).double()
    u = torch.randn(3, 4, dtype=torch.float64, requires_grad=True)

    def f(u, D):
        return torch.func.functional_call(block, {"D": D}, (u,))

    assert torch.autograd.gradcheck(f, (u, block.D), eps=1e-6, atol=1e-6)


@pytest.mark.parametrize("tied", [False, True])
def test_overcomplete_ista_gradcheck(tied):
    torch.manual_seed(3)
    block = OvercompleteISTA(3, ratio=2, steps=2, step_size=0.3, lambd=0.05, tied=tied).double()
    u = torch.randn(4, 3, dtype=torch.float64, requires_grad=True)
    names = ["D"] if tied else ["D", "D1"]
    params = tuple(getattr(block, n) for n in names)

    def f(u, *ps):
        return torch.func.functional_call(block, dict(zip(names, ps)), (u,))

    assert torch.autograd.gradcheck(f, (u, *params), eps=1e-6, atol=1e-6)


# -- the eval-mode cache of W = I + eta (D - D^T D) -------------------------------------------


def square_ista_flops(block: ISTA, u: torch.Tensor) -> int:
    with FlopCounterMode(display=False) as counter:
        block(u)
    return counter.get_total_flops()


def test_eval_forward_reuses_the_operator_until_D_changes():
    """In eval mode under no_grad the d x d operator is formed once (2 d^3 flops), then each forward
    costs only the token matmul 2 N d^2; every way of changing D makes it form W again, and the
    output always equals the column formula for the current D."""
    torch.manual_seed(4)
    block = ISTA(DIM, step_size=0.2, lambd=0.05).double().eval()
    u = tokens(3, 5)
    token_flops = 2 * u.numel() * DIM

    def check(expect_flops):
        with torch.no_grad():
            assert square_ista_flops(block, u) == expect_flops
            torch.testing.assert_close(
                block(u), ista_square_column(u, block.D, 0.2, 0.05), rtol=1e-12, atol=1e-12
            )

    check(2 * DIM**3 + token_flops)
    check(token_flops)  # cached
    with torch.no_grad():
        block.D.mul_(0.5)  # in-place edit (as nn.init and load_state_dict do)
    check(2 * DIM**3 + token_flops)
    other = ISTA(DIM, step_size=0.2, lambd=0.05).double()
    block.load_state_dict(other.state_dict())
    torch.testing.assert_close(block.D, other.D)
    check(2 * DIM**3 + token_flops)
    block.D = torch.nn.Parameter(torch.randn(DIM, DIM, dtype=torch.float64))  # a new parameter
    check(2 * DIM**3 + token_flops)
    block.step_size = 0.2  # same eta: still cached
    check(token_flops)
    block.eval()  # eval() again (as a benchmark's per-call switch does) keeps it
    check(token_flops)
    block.step_size = 0.3  # another eta: formed again
    with torch.no_grad():
        assert square_ista_flops(block, u) == 2 * DIM**3 + token_flops
        torch.testing.assert_close(block(u), ista_square_column(u, block.D, 0.3, 0.05), rtol=1e-12, atol=1e-12)
    block.step_size = 0.2
    block.train()
    block.eval()  # training in between drops it
    check(2 * DIM**3 + token_flops)


def test_training_step_then_eval_is_not_stale():
    """An optimizer step on D between two eval forwards is seen by the second one."""
    torch.manual_seed(5)
    block = ISTA(DIM, step_size=0.1, lambd=0.1).double()
    u = tokens(2, 5)
    opt = torch.optim.SGD(block.parameters(), lr=0.5)
    block.eval()
    with torch.no_grad():
        block(u)  # fills the cache
    block.train()
    block(u).square().sum().backward()
    opt.step()
    block.eval()
    with torch.no_grad():
        torch.testing.assert_close(block(u), ista_square_column(u, block.D, 0.1, 0.1), rtol=1e-12, atol=1e-12)
    # the same without leaving eval mode (fine-tuning in eval mode)
    opt.zero_grad()
    block(u).square().sum().backward()
    opt.step()
    with torch.no_grad():
        torch.testing.assert_close(block(u), ista_square_column(u, block.D, 0.1, 0.1), rtol=1e-12, atol=1e-12)


def test_eval_mode_gradients_match_the_direct_formula():
    """In eval mode with gradients recorded the cache is not used: dL/dD and dL/du are those of
    the column formula."""
    torch.manual_seed(6)
    block = ISTA(DIM, step_size=0.3, lambd=0.05).double().eval()
    u = tokens(2, 5).requires_grad_()
    with torch.no_grad():
        block(u)  # a cached W must not leak into the graph below
    block(u).pow(3).sum().backward()
    D = block.D.detach().clone().requires_grad_()
    u2 = u.detach().clone().requires_grad_()
    ista_square_column(u2, D, 0.3, 0.05).pow(3).sum().backward()
    torch.testing.assert_close(block.D.grad, D.grad, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(u.grad, u2.grad, rtol=1e-10, atol=1e-12)


def test_frozen_D_input_gradient_after_inference_mode():
    """A W formed under inference_mode is not reused where autograd records (input gradients of a
    frozen block); the result and the input gradient are the formula's."""
    torch.manual_seed(7)
    block = ISTA(DIM, step_size=0.1, lambd=0.1).double().eval().requires_grad_(False)
    u = tokens(2, 5)
    with torch.inference_mode():
        block(u)
    x = u.clone().requires_grad_()
    block(x).sum().backward()
    x2 = u.clone().requires_grad_()
    ista_square_column(x2, block.D, 0.1, 0.1).sum().backward()
    torch.testing.assert_close(x.grad, x2.grad, rtol=1e-12, atol=1e-12)


def test_cached_operator_under_autocast_matches_uncached():
    """Under bfloat16 autocast the cached W (kept cast to bfloat16) gives the uncached result."""
    torch.manual_seed(8)
    block = ISTA(32, step_size=0.1, lambd=0.1)
    u = torch.randn(4, 16, 32)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        want = block(u)  # train mode: no cache
        block.eval()
        block(u)
        got = block(u)
    assert got.dtype == want.dtype == torch.bfloat16
    torch.testing.assert_close(got, want, rtol=0, atol=0)
