"""How the fused additive-attention kernel's launcher lays out the work: every tile shape of its
launch table matches the float64 reference (criterion of tests/additive_reference.py), every
buffer it allocates is written, empty lengths and an empty grid (batch or heads of 0) launch
nothing wrong, and strided (non-contiguous) inputs give exactly the contiguous result.
"""

import importlib

import pytest
import torch
from additive_reference import (
    DEVICE,
    assert_close_as_flash_attention_does,
    output_and_grads,
    random_inputs,
    random_key_mask,
    report_largest_errors,  # noqa: F401 (autouse: -s prints the largest errors)
)

from kernels import additive_attention
from kernels.common import runtime
from kernels.common.tuning import LaunchConfig

# The reference helpers build their inputs on the kernel_device fixture's device (devices.py).
pytestmark = pytest.mark.usefixtures("kernel_device")

aa_configs = importlib.import_module("kernels.additive_attention.configs")


@pytest.mark.parametrize("batch,heads", [(0, 2), (2, 0), (0, 0)])
def test_batch_or_heads_of_zero_give_empty_outputs_and_gradients(batch, heads, monkeypatch):
    """Nothing is launched on an empty grid (a GPU refuses a grid dimension of 0)."""
    from triton.runtime.jit import KernelInterface

    grids, getitem = [], KernelInterface.__getitem__
    monkeypatch.setattr(
        KernelInterface,
        "__getitem__",
        lambda kernel, grid: grids.append(grid) or getitem(kernel, grid),
    )
    qf, kf, w, v, dout = random_inputs(batch, heads, 5, 7, 8, 16, torch.float32)
    leaves = [t.clone().requires_grad_() for t in (qf, kf, w, v)]
    mask = torch.ones(batch, 1, 1, 7, dtype=torch.bool, device=DEVICE)
    out, lse = additive_attention(*leaves, attn_mask=mask, is_causal=True, return_lse=True)
    out.backward(dout)
    assert out.shape == (batch, heads, 5, 16) and lse.shape == (batch, heads, 5)
    assert [leaf.grad.shape for leaf in leaves] == [t.shape for t in (qf, kf, w, v)]
    assert grids == []  # every grid has batch * heads = 0 programs
    assert (leaves[2].grad == 0).all()


def test_non_contiguous_inputs_and_grads_match_contiguous():
    qf, kf, w, v, dout = random_inputs(2, 3, 21, 33, 12, 24, torch.float32)
    # (b, n, h, a) storage seen as (b, h, n, a), as a model's head split produces
    as_bnhd = [t.transpose(1, 2).contiguous().transpose(1, 2) for t in (qf, kf, v, dout)]
    assert not as_bnhd[0].is_contiguous()
    w_t = w.t().contiguous().t()  # (h, a) with a column-major layout
    want = output_and_grads(additive_attention, qf, kf, w, v, dout, torch.float32, is_causal=True)
    qf2, kf2, v2, dout2 = as_bnhd
    got = output_and_grads(
        additive_attention, qf2, kf2, w_t, v2, dout2, torch.float32, is_causal=True
    )
    for a, b in zip(got, want, strict=True):
        assert torch.equal(a, b)


def test_every_output_element_is_written(monkeypatch):
    """Every buffer the launchers allocate is pre-filled with NaN; none may survive."""

    def poisoned(shape, dtype, device):
        return torch.full(shape, float("nan"), dtype=dtype, device=device)

    monkeypatch.setattr(runtime, "empty", poisoned)
    qf, kf, w, v, dout = random_inputs(2, 2, 70, 45, 6, 20, torch.float16)
    mask = random_key_mask(2, 45)
    leaves = [t.clone().requires_grad_() for t in (qf, kf, w, v)]
    out, lse = additive_attention(*leaves, attn_mask=mask, is_causal=True, return_lse=True)
    out.backward(dout)
    assert not lse.isnan().any()
    for t in (out, *(leaf.grad for leaf in leaves)):
        assert torch.isfinite(t).all()


# Every tile shape in the additive launch table; lengths as in test_flash_launch.py's
# block_lengths (whole and partial query tiles, a causal shift of more than a key block, then
# swapped). A representative few by default; the whole table under the slow marker.
TABLE_BLOCKS = sorted({(c.block_m, c.block_n) for cs in aa_configs.CONFIGS.values() for c in cs})
DEFAULT_BLOCKS = [(16, 32), (64, 32)]


def block_lengths(block_m, block_n):
    len_q = block_m + 3
    return [(len_q, len_q + block_n + 5), (len_q + block_n + 5, len_q)]


def assert_blocks_match_the_reference(blocks, monkeypatch, maskings):
    forced = [LaunchConfig(*blocks, 4, 1)]
    monkeypatch.setattr(aa_configs, "for_kernel", lambda kernel, dtype: forced)
    for len_q, len_k in block_lengths(*blocks):
        qf, kf, w, v, dout = random_inputs(2, 1, len_q, len_k, 6, 12, torch.float32, seed=len_q)
        for masked, is_causal in maskings:
            mask = random_key_mask(2, len_k) if masked else None
            kwargs = dict(attn_mask=mask, is_causal=is_causal)
            assert_close_as_flash_attention_does(qf, kf, w, v, dout, **kwargs)


@pytest.mark.parametrize("blocks", DEFAULT_BLOCKS, ids=str)
def test_launch_table_block_sizes_match_the_reference(blocks, monkeypatch):
    assert set(DEFAULT_BLOCKS) <= set(TABLE_BLOCKS)
    assert_blocks_match_the_reference(blocks, monkeypatch, [(True, True)])


@pytest.mark.slow
@pytest.mark.parametrize("blocks", TABLE_BLOCKS, ids=str)
def test_every_launch_table_block_size_matches_the_reference_with_every_masking(
    blocks, monkeypatch
):
    maskings = [(False, False), (False, True), (True, False), (True, True)]
    assert_blocks_match_the_reference(blocks, monkeypatch, maskings)


def test_empty_lengths():
    qf, kf, w, v, _ = random_inputs(1, 2, 5, 0, 8, 16, torch.float32)
    out, lse = additive_attention(qf, kf, w, v, return_lse=True)
    assert (out == 0).all() and (lse == float("-inf")).all()
    qf, kf, w, v, _ = random_inputs(1, 2, 0, 5, 8, 16, torch.float32)
    leaves = [t.clone().requires_grad_() for t in (qf, kf, w, v)]
    out = additive_attention(*leaves)
    out.sum().backward()
    assert out.shape == (1, 2, 0, 16)
    assert all((leaf.grad == 0).all() for leaf in leaves[1:])
