"""The mask builder of the Hugging Face backend: no (n x n) mask where the kernel needs none.

``transformers`` builds each model's attention mask through the builder registered in
``AttentionMaskInterface`` under the attention implementation's name, handing it a *mask
function* (which (query, key) pairs take part) and the 2-D padding mask. SDPA's builder
(``masking_utils.sdpa_mask``) turns every pattern it cannot skip into a (b, 1, len_q, len_k)
boolean mask. :func:`build_mask` recognises the patterns the kernel computes from flags
instead, and returns a compact form (read by :mod:`kernels.integrations.huggingface`):

* ``None``: no padding and no window; causality comes from the model's attention call
  (``is_causal`` or the module's, as for ``"sdpa"``).
* a (b, len_k) boolean tensor (True = a token): causal attention over keys that are not
  padding; only when len_q == len_k with no cache offset.
* a (b, 1, 1, len_k) boolean tensor: bidirectional attention over keys that are not padding,
  an ordinary SDPA mask with stride 0 over queries.
* a (b, n) integer tensor: packed sequences (``position_ids`` that restart, no padding, no
  cache), each token's sequence index in its row; causal within each sequence.

A causal pattern with a sliding window carries its size on the compact tensor (read with
:func:`mask_window`; a window without padding comes as an all-True (b, len_k) tensor marked as
holding no padding): the mask is what ``"eager"`` and ``"sdpa"`` apply, and some models
(PhiMoE, Qwen2-MoE in transformers 5.24) build a sliding-window mask without passing
``sliding_window`` to the attention call. The mark is a Python attribute of that tensor
object: a copy of the mask (``.to()`` another device) loses it, and the window then comes from
the attention call's ``sliding_window`` alone, as before; the padding it holds stays right.

A pattern it does not recognise gets SDPA's full mask, so correctness never depends on the
recognition: the model's own mask functions are matched by their code objects and captured
values (``causal_mask_function``; ``sliding_window_causal_mask_function``; the packed
sequence remapping around either; ``bidirectional_mask_function``), any other function (a
chunked, block-wise or custom overlay), a cache offset or a request to materialise the mask
(``allow_is_causal_skip=False``) goes to ``sdpa_mask``, and so does everything while
``torch.compile`` traces (telling padding apart reads the mask's values). One exception:
transformers clears ``allow_is_causal_skip`` for every packed batch, so packed sequences come
compact whatever it says; a model that asks for the full mask to edit it (Falcon, Doge and
three others in transformers 5.24) would get the compact form for a packed batch (not tried).
"""

from __future__ import annotations

from typing import NamedTuple

import torch


class CausalPattern(NamedTuple):
    """A causal mask function the kernel computes from flags: for packed sequences, each
    token's sequence index (b, n); ``window``: its sliding window (transformers' count: a query
    sees that many keys, itself included), or None."""

    packed: torch.Tensor | None = None
    window: int | None = None


class Mark(NamedTuple):
    """What a compact mask carries beyond its values: its sliding window (or None), whether it
    holds padding (an all-True stand-in when it holds only the window), and, for packed
    sequences, their packing, read once per forward here rather than once per layer."""

    window: int | None
    holds_padding: bool
    packing: tuple | None = None


# The attribute of a compact mask that holds its Mark.
_MARK_ATTRIBUTE = "triton_transformer_mark"


def mask_window(attention_mask):
    """(the mask the kernel reads, the sliding window the mask carries or None) for a mask
    :func:`build_mask` made: a windowed mask marked as holding no padding reads as None."""
    mark = getattr(attention_mask, _MARK_ATTRIBUTE, None)
    if mark is None or mark.window is None:
        return attention_mask, None
    return (attention_mask if mark.holds_padding else None), mark.window


def mask_packing(attention_mask) -> tuple | None:
    """The packing a packed mask :func:`build_mask` made carries, :func:`packing_of` it, or
    None (a copy of the mask, ``.to()`` another device, loses it: read it again)."""
    mark = getattr(attention_mask, _MARK_ATTRIBUTE, None)
    return None if mark is None else mark.packing


def packing_of(sequence_ids):
    """(cu_seqlens, cu_seqlens, longest, longest) of the packed sequences the packed form
    (each token's sequence index, (b, n)) describes: the rows' tokens laid end to end, a
    sequence starting wherever the index changes or a row begins. Reads back from the device
    twice (the starts, the longest)."""
    starts = torch.ones_like(sequence_ids, dtype=torch.bool)
    starts[:, 1:] = sequence_ids[:, 1:] != sequence_ids[:, :-1]
    starts = starts.flatten().nonzero().flatten()
    cu_seqlens = torch.cat([starts, starts.new_tensor([sequence_ids.numel()])]).to(torch.int32)
    longest = int(cu_seqlens.diff().max())
    return cu_seqlens, cu_seqlens, longest, longest


def _carrying(compact, window, batch_size, kv_length, device, packed=False):
    """``compact`` (a tensor, or None for no padding) marked with the pattern's window and, for
    packed sequences (``packed``), their packing; a new tensor object (a view), so that
    transformers' own tensors are never marked."""
    if window is None and not packed:
        return compact
    holds_padding = compact is not None
    if compact is None:
        compact = torch.ones(batch_size, kv_length, dtype=torch.bool, device=device)
    else:
        compact = compact.view_as(compact)
    packing = packing_of(compact) if packed else None
    window = None if window is None else int(window)
    setattr(compact, _MARK_ATTRIBUTE, Mark(window, holds_padding, packing))
    return compact


def _captured(fn, template) -> dict | None:
    """The values ``fn`` captured, by name, if it is a closure made by the same code as
    ``template``; else None."""
    if getattr(fn, "__code__", None) is not template.__code__:
        return None
    cells = fn.__closure__ or ()
    return {
        name: cell.cell_contents for name, cell in zip(fn.__code__.co_freevars, cells, strict=True)
    }


def causal_pattern(mask_function) -> CausalPattern | None:
    """What a transformers causal mask function computes, if it is one the kernel computes
    from flags: plain causal, causal with a sliding window, either over packed sequences."""
    from transformers import masking_utils as mu

    if mask_function is mu.causal_mask_function:
        return CausalPattern()
    parts = _captured(mask_function, mu.and_masks(mu.causal_mask_function))
    if parts is None or len(parts["mask_functions"]) != 2:
        return None
    first, second = parts["mask_functions"]
    overlay = _captured(first, mu.sliding_window_overlay(1))
    if overlay is not None and second is mu.causal_mask_function:
        return CausalPattern(window=overlay["sliding_window"])
    remapped = _captured(
        first, mu.remap_positions_for_packed_sequence(mu.causal_mask_function, None)
    )
    packed = _captured(second, mu.packed_sequence_mask_function(None))
    if remapped is None or packed is None:
        return None
    inner = causal_pattern(remapped["mask_function"])
    if inner is None or inner.packed is not None:
        return None
    # Within one packed sequence the positions are consecutive (a new sequence starts wherever
    # they are not), so windows over positions are windows over indices.
    return CausalPattern(packed=packed["packed_sequence_mask"], window=inner.window)


def build_mask(
    batch_size, q_length, kv_length, q_offset=0, kv_offset=0, mask_function=None,
    attention_mask=None, allow_is_causal_skip=True, allow_is_bidirectional_skip=False, **kwargs,
):  # fmt: skip
    """``AttentionMaskInterface``'s signature: the compact form of the mask, or SDPA's."""
    from transformers import masking_utils as mu

    mask_function = mask_function or mu.causal_mask_function  # sdpa_mask's default

    def sdpa():
        return mu.sdpa_mask(
            batch_size=batch_size, q_length=q_length, kv_length=kv_length, q_offset=q_offset,
            kv_offset=kv_offset, mask_function=mask_function, attention_mask=attention_mask,
            allow_is_causal_skip=allow_is_causal_skip,
            allow_is_bidirectional_skip=allow_is_bidirectional_skip, **kwargs,
        )  # fmt: skip

    if torch.compiler.is_compiling() or isinstance(q_offset, torch.Tensor):
        return sdpa()  # reading the padding's values would break the graph (sdpa_mask's rule)
    padding = _padding(attention_mask, batch_size, kv_length, kv_offset)
    if padding is False:
        return sdpa()
    if mask_function is mu.bidirectional_mask_function and allow_is_bidirectional_skip:
        return None if padding is None else padding[:, None, None, :]
    if q_offset != 0 or kv_offset != 0 or q_length != kv_length:
        return sdpa()
    pattern = causal_pattern(mask_function)
    if pattern is None or (pattern.packed is not None and padding is not None):
        return sdpa()
    device = attention_mask.device if attention_mask is not None else kwargs.get("device", "cpu")
    if pattern.packed is not None:
        # transformers clears allow_is_causal_skip for every packed batch (SDPA cannot skip
        # their mask), so here it does not say that the caller needs the full mask.
        return _carrying(pattern.packed, pattern.window, batch_size, kv_length, device, True)
    if not allow_is_causal_skip:
        return sdpa()
    return _carrying(padding, pattern.window, batch_size, kv_length, device)


def _padding(attention_mask, batch_size, kv_length, kv_offset):
    """The (b, len_k) key padding mask, None without padding, or False when the 2-D mask is
    not one (another shape, or one that covers more than these keys)."""
    if attention_mask is None:
        return None
    if attention_mask.shape != (batch_size, kv_length) or kv_offset != 0:
        return False
    attention_mask = attention_mask.bool()
    return None if bool(attention_mask.all()) else attention_mask
