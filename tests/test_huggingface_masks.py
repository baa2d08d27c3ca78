"""The Hugging Face backend's mask builder: compact forms that mean exactly SDPA's masks.

``build_mask`` (kernels.integrations.huggingface_masks) is called with the mask functions
transformers' own ``create_*_mask`` functions build. Each compact form, expanded as its
docstring says the backend reads it, equals the boolean mask ``masking_utils.sdpa_mask`` builds
from the same arguments; every pattern it does not recognise gets ``sdpa_mask``'s result
itself. No kernel runs here.
"""

import pytest
import torch

transformers = pytest.importorskip("transformers")

from transformers import masking_utils as mu  # noqa: E402

from kernels.integrations.huggingface_masks import build_mask, mask_window  # noqa: E402


def expand(compact, batch, len_q, len_k, causal):
    """The (b, 1, len_q, len_k) boolean mask a compact form stands for, given the causality of
    the call, as the backend reads it: the window (a query sees the ``window`` latest keys,
    itself included) is the one the compact form carries, never the attention call's."""
    compact, window = mask_window(compact)
    rows = torch.arange(len_q)[:, None]
    keys = torch.arange(len_k)[None, :]
    seen = torch.ones(len_q, len_k, dtype=torch.bool)
    if causal:
        seen &= keys <= rows
    if window is not None:
        seen &= keys > rows - window
    seen = seen.expand(batch, 1, len_q, len_k)
    if compact is None:
        return seen
    if compact.dim() == 4:
        return seen & compact
    if compact.dtype == torch.bool:
        return seen & compact[:, None, None, :]
    return seen & (compact[:, :, None] == compact[:, None, :])[:, None]


def both(mask_function, padding=None, n=11, skip=True, **kwargs):
    """(build_mask's result, sdpa_mask's materialised) for one set of arguments; ``skip``:
    the caller allows a skipped mask (transformers' allow_is_causal_skip)."""
    args = dict(
        batch_size=2, q_length=n, kv_length=n, mask_function=mask_function,
        attention_mask=padding, **kwargs,
    )  # fmt: skip
    full = mu.sdpa_mask(
        **dict(args, allow_is_causal_skip=False, allow_is_bidirectional_skip=False)
    )  # fmt: skip
    return build_mask(**args, allow_is_causal_skip=skip), full


def right_padding(lengths, n):
    return torch.arange(n)[None, :] < torch.tensor(lengths)[:, None]


@pytest.mark.parametrize("window", [None, 1, 4, 11, 30])
@pytest.mark.parametrize("lengths", [None, [11, 6], [3, 11]])
def test_causal_and_sliding_masks_come_compact_and_mean_sdpas_mask(window, lengths):
    function = mu.causal_mask_function
    if window is not None:
        function = mu.sliding_window_causal_mask_function(window)
    padding = None if lengths is None else right_padding(lengths, 11)
    compact, full = both(function, padding, local_size=window)
    assert compact is None or compact.shape == (2, 11)
    assert mask_window(compact)[1] == window  # carried: some models pass no sliding_window
    if lengths is None:
        assert mask_window(compact)[0] is None
    assert torch.equal(expand(compact, 2, 11, 11, True), full)


@pytest.mark.parametrize("window", [None, 3])
def test_packed_sequences_come_as_sequence_indices_and_mean_sdpas_mask(window):
    position_ids = torch.tensor(
        [[0, 1, 2, 3, 4, 0, 1, 2, 0, 1, 2, 3], [0, 1, 2, 3, 4, 5, 6, 0, 1, 2, 3, 4]]
    )
    packed = mu.find_packed_sequence_indices(position_ids)
    base = mu.causal_mask_function
    if window is not None:
        base = mu.sliding_window_causal_mask_function(window)
    function = mu.and_masks(
        mu.remap_positions_for_packed_sequence(base, position_ids),
        mu.packed_sequence_mask_function(packed),
    )
    compact, full = both(function, n=12, skip=False, local_size=window)  # as transformers
    assert compact.dtype != torch.bool and compact.shape == (2, 12)
    assert mask_window(compact)[1] == window
    assert torch.equal(expand(compact, 2, 12, 12, True), full)


@pytest.mark.parametrize("lengths", [None, [11, 6]])
def test_bidirectional_masks_come_as_key_padding(lengths):
    padding = None if lengths is None else right_padding(lengths, 11)
    compact, full = both(
        mu.bidirectional_mask_function, padding, skip=False, allow_is_bidirectional_skip=True
    )
    assert compact is None or compact.shape == (2, 1, 1, 11)
    assert torch.equal(expand(compact, 2, 11, 11, False), full)


def test_a_windowed_mask_is_marked_on_a_new_tensor_never_on_transformers_own():
    padding = right_padding([11, 6], 11)
    position_ids = torch.tensor([[0, 1, 2, 3, 4, 0, 1, 2, 3, 4, 5]] * 2)
    packed = mu.find_packed_sequence_indices(position_ids)
    function = mu.and_masks(
        mu.remap_positions_for_packed_sequence(
            mu.sliding_window_causal_mask_function(3), position_ids
        ),
        mu.packed_sequence_mask_function(packed),
    )
    windowed = both(mu.sliding_window_causal_mask_function(3), padding, local_size=3)[0]
    assert mask_window(windowed)[1] == 3 and mask_window(padding) == (padding, None)
    assert mask_window(both(function, skip=False)[0])[1] == 3
    assert mask_window(packed) == (packed, None)


def test_patterns_it_does_not_know_get_sdpas_own_mask():
    padding = right_padding([11, 6], 11)
    chunked = mu.chunked_causal_mask_function(3, torch.zeros(2, dtype=torch.long))
    custom = mu.and_masks(mu.causal_mask_function, lambda b, h, q, kv: kv % 2 == 0)
    overlay = mu.or_masks(mu.sliding_window_causal_mask_function(3), lambda b, h, q, kv: kv < 2)
    for function in (chunked, custom, overlay, mu.sliding_window_bidirectional_mask_function(2)):
        compact, full = both(function, padding, allow_is_bidirectional_skip=True)
        assert torch.equal(compact, full)


def test_a_cache_offset_or_a_request_for_the_full_mask_gets_sdpas_own_mask():
    padding = right_padding([11, 6], 11)
    compact, full = both(mu.causal_mask_function, padding, skip=False)
    assert torch.equal(compact, full)
    args = dict(batch_size=2, q_length=4, kv_length=11, q_offset=7, attention_mask=padding)
    assert torch.equal(build_mask(**args), mu.sdpa_mask(**args))


def test_while_torch_compile_traces_it_reads_no_values_and_gives_sdpas_mask(monkeypatch):
    monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)
    padding = right_padding([11, 6], 11)
    compact, full = both(mu.causal_mask_function, padding)
    assert torch.equal(compact, full)
