import pytest
import torch

from dind.attention import block_causal_mask, block_diff_mask, causal_mask


def brute_force_mask(L: int, B: int) -> torch.Tensor:
    """The three sub-masks of BD3-LM, written as an explicit double loop."""
    m = torch.zeros(2 * L, 2 * L, dtype=torch.bool)
    for q in range(2 * L):
        for kv in range(2 * L):
            q_clean, kv_clean = q >= L, kv >= L
            bq, bk = (q % L) // B, (kv % L) // B
            m_bd = bq == bk and q_clean == kv_clean
            m_obc = (not q_clean) and kv_clean and bq > bk
            m_bc = q_clean and kv_clean and bq >= bk
            m[q, kv] = m_bd or m_obc or m_bc
    return m


@pytest.mark.parametrize("L,B", [(8, 1), (8, 2), (8, 4), (8, 8), (12, 3), (16, 4), (16, 16)])
def test_mask_matches_brute_force(L, B):
    assert torch.equal(block_diff_mask(L, B), brute_force_mask(L, B))


@pytest.mark.parametrize(
    "end,B,start,first_row",
    [(16, 4, 0, None), (16, 4, 6, None), (16, 4, 0, 8), (17, 4, 3, 9), (12, 3, 5, 5)],
)
def test_block_causal_rows_are_the_clean_corner_of_the_brute_force_mask(end, B, start, first_row):
    """Positions [start, end) of a sequence of length ``end``; rows from ``first_row``."""
    corner = brute_force_mask(end, B)[end:, end:]  # clean queries, clean keys
    rows = start if first_row is None else first_row
    expected = corner[rows:, start:]
    assert torch.equal(block_causal_mask(end, B, "cpu", start, first_row=first_row), expected)


def test_mixed_batch_mask():
    L = 16
    sizes = torch.tensor([4, 16, 2, 4, 8])
    m = block_diff_mask(L, sizes)
    assert m.shape == (5, 2 * L, 2 * L)
    for i, b in enumerate(sizes.tolist()):
        assert torch.equal(m[i], brute_force_mask(L, b))


def test_block_size_L_is_full_sequence_diffusion():
    L = 8
    m = block_diff_mask(L, L)
    # x_t attends to all of x_t and nothing of x_0: MDLM's bidirectional attention.
    assert m[:L, :L].all()
    assert not m[:L, L:].any()
    # x_0 attends to all of x_0 (one block) and never to x_t.
    assert m[L:, L:].all()
    assert not m[L:, :L].any()


def test_block_size_1_xt_sees_strict_prefix_of_x0():
    L = 6
    m = block_diff_mask(L, 1)
    for q in range(L):
        assert m[q, L : L + q].all() and not m[q, L + q :].any()
        assert m[q, q] and m[q, :L].sum() == 1


def test_causal_mask():
    m = causal_mask(5)
    assert m[4].all() and m[0].sum() == 1 and not m[0, 1]
