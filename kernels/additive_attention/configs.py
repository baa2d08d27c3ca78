"""Launch tables of the additive kernels: configurations to choose from, per kernel and dtype.

Measured with the compile gate (``python -m kernels.compile_gate``) on sm_80/86/89/90; ptxas
spills a few bytes in some of these on some architectures, and the tuner passes over a config
that spills (``docs/kernel.md``).
"""

import torch

from kernels.common import runtime, tuning
from kernels.common.tuning import LaunchConfig

C = LaunchConfig  # (BLOCK_M query rows, BLOCK_N key rows, warps, stages)
# By kernel name and whether the inputs are 16-bit, best guess first. The live set is a few
# (BLOCK_M, BLOCK_N) float32 tiles, the output or dV accumulator and, in the backward, a
# (BLOCK, A) feature-gradient accumulator. float32 runs its P V products on FMA units (IEEE, no
# tensor cores), which needs smaller tiles. The channel loops are not software-pipelined (one
# stage): per channel they load two vectors, while the exp2 and division over the whole tile are
# the work -- which is also why these kernels do not need Hopper's wgmma (their products are a
# small part of the work).
CONFIGS = {
    ("_additive_fwd", True): [C(32, 32, 4, 1), C(32, 32, 8, 1), C(64, 32, 4, 1)],
    ("_additive_fwd", False): [C(32, 32, 8, 1), C(32, 32, 4, 1), C(16, 32, 4, 1)],
    ("_additive_bwd_dq", True): [C(32, 32, 4, 1), C(32, 32, 8, 1), C(64, 32, 4, 1)],
    ("_additive_bwd_dq", False): [C(32, 32, 4, 1), C(16, 32, 4, 1), C(32, 16, 4, 1)],
    ("_additive_bwd_dkdv", True): [C(32, 64, 8, 1), C(32, 32, 4, 1), C(32, 32, 8, 1)],
    ("_additive_bwd_dkdv", False): [C(16, 16, 4, 1), C(16, 32, 4, 1), C(32, 16, 4, 1)],
}


def for_kernel(kernel_name, dtype):
    """The launch configurations to choose from for one of the additive kernels (one under the
    interpreter, where numpy runs fewer, larger blocks faster)."""
    if runtime.INTERPRETED:
        return [tuning.INTERPRETER_CONFIG]
    return CONFIGS[kernel_name, dtype != torch.float32]
