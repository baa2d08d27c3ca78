"""The one mask convention (transformer.masks): lifting key padding masks, and the checks that
refuse a mask which does not follow it."""

import pytest
import torch

from transformer.masks import check_attn_mask, combine_masks, key_padding_to_attn_mask


def test_key_padding_mask_is_lifted_to_batch_1_1_len_k_and_keeps_its_values():
    gen = torch.Generator().manual_seed(0)
    padding = torch.rand(3, 7, generator=gen) < 0.6
    lifted = key_padding_to_attn_mask(padding)
    assert lifted.shape == (3, 1, 1, 7) and lifted.dtype == torch.bool
    for b in range(3):
        assert torch.equal(lifted[b, 0, 0], padding[b])  # row b hides row b's padding only
    check_attn_mask(lifted, batch=3, heads=4, len_q=5, len_k=7)  # follows the convention


def test_a_lifted_key_mask_hides_the_same_keys_for_every_query_and_head():
    padding = torch.tensor([[True, True, False], [True, False, False]])
    full = combine_masks(key_padding_to_attn_mask(padding), False, 4, 3, torch.device("cpu"))
    expanded = full.expand(2, 2, 4, 3)
    assert torch.equal(expanded, padding[:, None, None, :].expand(2, 2, 4, 3))


@pytest.mark.parametrize(
    "mask,error,message",
    [
        (torch.ones(2, 5, dtype=torch.long), TypeError, r"torch.bool \(True = real token\)"),
        (torch.ones(2, 5), TypeError, "torch.bool"),
        (torch.ones(5, dtype=torch.bool), ValueError, r"\(batch, len_k\), got \(5,\)"),
        (torch.ones(2, 1, 5, dtype=torch.bool), ValueError, r"\(batch, len_k\), got \(2, 1, 5\)"),
    ],
    ids=["int64", "float", "1-d", "3-d"],
)
def test_key_padding_mask_of_the_wrong_dtype_or_rank_is_refused(mask, error, message):
    with pytest.raises(error, match=message):
        key_padding_to_attn_mask(mask)


@pytest.mark.parametrize(
    "mask", [[[True, False]], (True,), 1, "mask"], ids=["list", "tuple", "int", "str"]
)
def test_a_mask_that_is_not_a_tensor_is_refused_naming_its_type(mask):
    with pytest.raises(TypeError, match=f"torch.Tensor or None, got {type(mask).__name__}"):
        check_attn_mask(mask, 1, 1, 1, 2)


def test_a_mask_of_rank_above_4_is_refused():
    check_attn_mask(torch.ones(1, 1, 1, 1, 4, dtype=torch.bool)[0], 2, 3, 5, 4)  # rank 4: fine
    with pytest.raises(ValueError, match="has 5 dims; it must broadcast to"):
        check_attn_mask(torch.ones(1, 1, 1, 1, 4, dtype=torch.bool), 2, 3, 5, 4)


def test_masks_of_rank_below_4_broadcast_from_the_right():
    check_attn_mask(torch.ones(4, dtype=torch.bool), 2, 3, 5, 4)
    check_attn_mask(torch.ones(5, 4, dtype=torch.bool), 2, 3, 5, 4)
    with pytest.raises(ValueError, match="its len_q dim is 2"):
        check_attn_mask(torch.ones(2, 4, dtype=torch.bool), 2, 3, 5, 4)
    check_attn_mask(None, 2, 3, 5, 4)  # no mask is always fine


def test_a_mask_dim_that_must_be_1_says_expected_1_not_1_or_1():
    """A (2, 1, 1, 7) mask for a batch of one said 'its batch dim is 2, expected 1 or 1'."""
    with pytest.raises(ValueError, match=r"its batch dim is 2, expected 1$"):
        check_attn_mask(torch.ones(2, 1, 1, 7, dtype=torch.bool), 1, 3, 5, 7)
