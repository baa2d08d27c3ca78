"""Input checks both kernels make before anything is launched: tensors of the right rank, a
device the kernels can run on, and key masks (the additive kernel reads only those; the flash
kernel reads any mask)."""

import torch

from kernels.common.runtime import INTERPRETED


def check_flag(value, name: str, caller: str) -> bool:
    """A yes/no argument such as ``is_causal`` of ``caller``: a bool (or NumPy's, or the int 0
    or 1), never a tensor, whose truth would be read from its data (a GPU sync, or torch's
    "ambiguous")."""
    is_int = isinstance(value, int) and value in (0, 1)
    is_numpy_bool = type(value).__module__ == "numpy" and type(value).__name__ in ("bool", "bool_")
    if isinstance(value, bool | torch.SymBool) or is_int or is_numpy_bool:
        return bool(value)
    raise TypeError(f"{caller}: {name} must be True or False, got {type(value).__name__}")


def check_rank(caller: str, rank: int, layout: str, **tensors) -> None:
    """Each of ``tensors`` (by argument name) a torch.Tensor of ``rank`` dimensions, or an error
    naming ``caller``, the argument and the ``layout`` it should have ("(batch, heads, ...)")."""
    for name, t in tensors.items():
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{caller}: {name} must be a torch.Tensor, got {type(t).__name__}")
        if t.dim() != rank:
            raise ValueError(
                f"{caller}: {name} must have rank {rank} {layout}, got shape {tuple(t.shape)}"
            )


def check_runnable(device: torch.device, caller: str) -> None:
    """CPU tensors need the Triton interpreter, which is chosen when triton is imported."""
    if device.type == "cpu" and not INTERPRETED:
        raise RuntimeError(
            f"{caller}: the tensors are on the CPU but Triton was imported without its "
            "interpreter. Set TRITON_INTERPRET=1 in the environment before triton (or kernels) "
            "is first imported, or move the tensors to a CUDA device."
        )


def key_mask_strides(attn_mask, q, k, caller: str) -> tuple[int, int, int]:
    """(batch, head, key) strides of a boolean (b|1, h|1, 1, len_k) key mask; 0 where a
    dimension broadcasts. Raises, naming ``caller``, on any other mask."""
    if not isinstance(attn_mask, torch.Tensor):
        raise TypeError(
            f"{caller}: attn_mask must be a torch.Tensor, got {type(attn_mask).__name__}"
        )
    if attn_mask.dtype != torch.bool:
        raise TypeError(
            f"{caller}: attn_mask must be torch.bool (True = key takes part), got {attn_mask.dtype}"
        )
    if attn_mask.device != q.device:
        raise ValueError(f"{caller}: attn_mask is on {attn_mask.device}, the inputs on {q.device}")
    b, h, len_q, _ = q.shape
    len_k = k.shape[2]
    shape = tuple(attn_mask.shape)
    if not (
        attn_mask.dim() == 4
        and shape[0] in (1, b)
        and shape[1] in (1, h)
        and shape[2] == 1
        and shape[3] == len_k
    ):
        raise ValueError(
            f"{caller}: attn_mask must be a key mask shaped (batch or 1, heads or 1, 1, "
            f"len_k) = ({b}|1, {h}|1, 1, {len_k}); got {tuple(attn_mask.shape)}."
            + "".join(f" {hint}" for hint in _mask_hints(attn_mask.dim(), shape))
        )
    # A dimension of size 1 broadcasts: stride 0 makes every batch/head read the same row.
    return (
        0 if shape[0] == 1 else attn_mask.stride(0),
        0 if shape[1] == 1 else attn_mask.stride(1),
        attn_mask.stride(3),
    )


def kernel_key_mask(attn_mask, q, k, caller: str) -> tuple[torch.Tensor, tuple[int, int, int]]:
    """A key mask as uint8 (Triton reads bytes) with its strides, or a dummy when absent."""
    if attn_mask is None:
        return torch.empty(1, dtype=torch.uint8, device=q.device), (0, 0, 0)
    return attn_mask.view(torch.uint8), key_mask_strides(attn_mask, q, k, caller)


# Why a mask of another rank or shape is refused, in the error message.
_MASK_HINTS = {
    2: "A 2-D mask means (len_q, len_k) in F.scaled_dot_product_attention, a full mask, which "
    "the kernel does not read (it reads key masks only); a (batch, len_k) key padding mask "
    "is passed as mask[:, None, None, :].",
    "full": "Full (len_q x len_k) masks are not supported: the kernel reads key masks only; "
    "pass causality with is_causal=True.",
}


def _mask_hints(rank: int, shape: tuple[int, ...]) -> list[str]:
    """The hints that explain why a key mask of this rank and shape is refused (maybe none)."""
    hints = [_MASK_HINTS[rank]] if rank in _MASK_HINTS else []
    if rank == 4 and shape[2] != 1:
        hints.append(_MASK_HINTS["full"])
    return hints
