"""What the kernels share: Triton device functions and constants (:mod:`kernels.common.jit`) and
the host side (allocation, choosing a launch configuration, the one launch function and its
recording hook). Each kernel package (``flash_attention``, ``additive_attention``) imports from
here, never from the other kernel."""
