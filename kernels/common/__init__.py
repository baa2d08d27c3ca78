"""What the kernels share. Each kernel package (``flash_attention``, ``additive_attention``)
imports from here, never from the other kernel.

Triton device functions and constants: :mod:`kernels.common.jit`. The host side:

* :mod:`kernels.common.runtime`: where kernels run (``INTERPRETED``, ``capability``,
  ``capturing``), buffers (``empty``), grids, and ``launch``, the one function every kernel
  launch goes through, with its :class:`~kernels.common.runtime.Hook` (the compile gate, the
  warm-up and the tests install one to record, compile or refuse launches);
* :mod:`kernels.common.tuning`: choosing a launch configuration (``LaunchConfig``,
  ``candidates``, ``pick``, ``launch_tuned``), and keeping choices on disk;
* :mod:`kernels.common.warm`: compiling kernels ahead of time, without launching them
  (``recording``, ``CompileJob``, ``compile_ahead``), generic over any kernel's launches;
* :mod:`kernels.common.checks`: input checks both kernels make (the device, key masks);
* :mod:`kernels.common.delta`: the launch of the backward's ``delta = rowsum(dO * O)`` pass both
  kernels run (its kernel is :func:`kernels.common.jit.attn_bwd_delta`).
"""
