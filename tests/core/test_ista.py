"""ISTA blocks against the column-form formulas of DESIGN.md / crate-family.md (core_formulas)."""

import pytest
import torch
from core_formulas import decode_column, ista_alpha_codes_column, ista_lm_codes_column, ista_square_column
from crate_core import ISTA, OvercompleteISTA

DIM = 6


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
    block = ISTA(DIM).double()
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
        ISTA(DIM, step_size=0.0)
    with pytest.raises(ValueError, match="lambd"):
        OvercompleteISTA(DIM, lambd=-1.0)
    with pytest.raises(ValueError, match="ratio"):
        OvercompleteISTA(DIM, ratio=0)
    with pytest.raises(ValueError, match="last dimension 6"):
        ISTA(DIM)(torch.randn(3, 5))
    with pytest.raises(ValueError, match="last dimension 6"):
        OvercompleteISTA(DIM)(torch.randn(3, 5))


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
