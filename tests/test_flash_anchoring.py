"""Where flash_attention anchors causality: top-left by default, as
``F.scaled_dot_product_attention``; bottom-right when asked (``alignment="bottom_right"``) or
given PyTorch's ``causal_lower_right`` bias, read without materialising it. The model
library's causality (a decoder's cache) is bottom-right: its triton backend asks for it.

Criterion: SDPA's math backend in float64 is the reference (tests/flash_reference.py's
criterion: at most twice naive attention's error in the same dtype plus a floor).
"""

import pytest
import torch
import torch.nn.functional as F
from flash_reference import (
    assert_close_as_flash_attention_does,
    max_err,
    naive_attention,
    random_inputs,
    random_key_mask,
    report_largest_errors,  # noqa: F401 (autouse: -s prints the largest errors)
)
from torch.nn.attention.bias import causal_lower_right, causal_upper_left

from kernels import flash_attention
from kernels.common import warm
from transformer.attention import attend

pytestmark = pytest.mark.usefixtures("kernel_device")


def sdpa(q, k, v, **kwargs):
    """SDPA (math backend on the CPU) with flash_attention's keywords that SDPA has."""
    return F.scaled_dot_product_attention(q, k, v, **kwargs)


@pytest.mark.parametrize("causal", ["is_causal", "upper_left", "lower_right"])
def test_causal_variants_match_sdpa_with_37_queries_over_53_keys_and_gqa(causal):
    # (a CausalBias is made in the test: one made at collection loses its attributes)
    kwargs = dict(
        is_causal=dict(is_causal=True),
        upper_left=dict(attn_mask=causal_upper_left(37, 53)),
        lower_right=dict(attn_mask=causal_lower_right(37, 53)),
    )[causal]
    q, k, v, dout = random_inputs(2, 4, 37, 53, 16, torch.float32, seed=3, heads_kv=2)
    assert_close_as_flash_attention_does(
        q, k, v, dout, reference=sdpa, enable_gqa=True, **kwargs
    )  # fmt: skip


def test_is_causal_is_top_left_not_bottom_right_when_lengths_differ():
    q, k, v, _ = random_inputs(1, 2, 37, 53, 16, torch.float32, seed=4)
    top_left = flash_attention(q, k, v, is_causal=True)
    bottom_right = flash_attention(q, k, v, is_causal=True, alignment="bottom_right")
    assert max_err(top_left, sdpa(q, k, v, is_causal=True)) < 1e-5
    assert max_err(top_left, bottom_right) > 0.1  # the two anchorings differ here


def test_bottom_right_with_more_queries_than_keys_and_a_key_mask_matches_the_reference():
    # Bottom-right with len_q > len_k: the first len_q - len_k rows see no key (zeros, where
    # SDPA's math backend gives NaN); a key mask combines with it (a CausalBias cannot).
    q, k, v, dout = random_inputs(2, 2, 53, 37, 16, torch.float32, seed=5)
    mask = random_key_mask(2, 37, seed=5)
    assert_close_as_flash_attention_does(
        q, k, v, dout, attn_mask=mask, is_causal=True, alignment="bottom_right"
    )


def test_the_model_librarys_triton_backend_keeps_bottom_right_causality():
    # A decoder's cached step: 5 new queries over 21 keys see the cache and their own past.
    q, k, v, _ = random_inputs(1, 2, 5, 21, 16, torch.float32, seed=6)
    ours = attend(q, k, v, is_causal=True, backend="triton")
    naive = attend(q, k, v, is_causal=True, backend="naive")
    assert max_err(ours, naive) < 1e-5
    reference = naive_attention(q, k, v, is_causal=True, alignment="bottom_right")
    assert max_err(ours, reference) < 1e-5


@pytest.mark.parametrize(
    "kwargs, error, words",
    [
        (dict(attn_mask=causal_lower_right(7, 9), is_causal=True), ValueError, "CausalBias"),
        (dict(attn_mask=causal_lower_right(9, 7)), ValueError, "(9, 7)"),
        (dict(is_causal=True, alignment="lower"), ValueError, "alignment"),
        (
            dict(attn_mask=causal_lower_right(7, 9), alignment="top_left"),
            ValueError,
            "contradicts",
        ),
    ],
    ids=["bias_and_is_causal", "bias_lengths", "bad_alignment", "contradiction"],
)
def test_bad_causal_arguments_are_refused_naming_them(kwargs, error, words):
    q, k, v, _ = random_inputs(1, 1, 7, 9, 16, torch.float32)
    with pytest.raises(error, match=words.replace("(", r"\(").replace(")", r"\)")):
        flash_attention(q, k, v, **kwargs)


def test_an_anchor_nothing_reads_compiles_no_kernel_of_its_own():
    """Without causality, a window or ALiBi the anchor is unread: a bottom-right call then
    launches the same kernel (one compile job) at any key-minus-query length, so the training
    warm-up, which compiles by length classes, covers decoding's cross-attention at every
    source length. With causality the shift is read, and its value class picks the kernel."""

    def jobs(len_k, **kwargs):
        q, k, v, _ = random_inputs(1, 2, 1, len_k, 16, torch.float32)
        with warm.recording("first") as launches:
            flash_attention(q, k, v, alignment="bottom_right", **kwargs)
        return set(warm.compile_jobs(launches))

    # len_k - 1 is 1, a multiple of 16, or neither: three classes of Triton's int specialisation
    unread = [jobs(len_k) for len_k in (2, 17, 20)]
    assert unread[0] == unread[1] == unread[2]
    read = [jobs(len_k, is_causal=True) for len_k in (2, 17, 20)]
    assert len(set.union(*read)) == 3
