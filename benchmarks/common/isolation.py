"""One fresh process per CPU point, so that nothing an earlier point freed (and the allocator
kept) hides the memory of the next; a child that dies is recorded, not raised."""

from __future__ import annotations

import contextlib
import importlib
import multiprocessing
import traceback

import torch

from benchmarks.common.statuses import failure

_CONTEXT: multiprocessing.context.BaseContext | None = None


def _context() -> multiprocessing.context.BaseContext:
    """Fork children from a server that has imported torch and the model already: a fresh
    process per point for a few milliseconds, not the seconds a spawn spends on imports."""
    global _CONTEXT
    if _CONTEXT is None:
        methods = multiprocessing.get_all_start_methods()
        _CONTEXT = multiprocessing.get_context("forkserver" if "forkserver" in methods else "spawn")
        if "forkserver" in methods:
            # The first backward imports symbolic_shapes (and sympy): half a second a child;
            # the first torch.profiler (peak_allocated on the CPU) imports torch._inductor:
            # seconds a child. The scripts themselves are left out: a child re-runs its
            # __main__ module anyway.
            _CONTEXT.set_forkserver_preload(
                [
                    "torch",
                    "torch.fx.experimental.symbolic_shapes",
                    "torch._inductor.config",
                    "transformer.model",
                    "benchmarks.common.isolation",
                    "benchmarks.common.measure",
                    "benchmarks.common.options",
                ]
            )
    return _CONTEXT


def _child(target: str, spec: dict, memory_cap_bytes: int | None, conn) -> None:
    torch.set_num_threads(1)  # the machine is shared; and a fair single-thread comparison
    try:
        module_name, function_name = target.split(":")
        function = getattr(importlib.import_module(module_name), function_name)
        result = function(spec, memory_cap_bytes)
    except BaseException as err:  # noqa: BLE001 -- report everything back to the parent
        result = failure(err)
        if result["status"] == "error":
            result["note"] += "\n" + traceback.format_exc(limit=3)
    conn.send(result)
    conn.close()


def run_isolated(target: str, spec: dict, memory_cap_bytes: int | None) -> dict:
    """``module:function`` called as ``function(spec, memory_cap_bytes)`` in a fresh process;
    its dict result, or an oom/error record if the child died (killed: out of memory)."""
    ctx = _context()
    parent_conn, child_conn = ctx.Pipe(duplex=False)
    process = ctx.Process(target=_child, args=(target, spec, memory_cap_bytes, child_conn))
    process.start()
    child_conn.close()
    result = None
    with contextlib.suppress(EOFError):
        result = parent_conn.recv()
    process.join()
    if result is not None:
        return result
    if process.exitcode == -9:
        return {"status": "oom", "note": "child process killed (SIGKILL), most likely for memory"}
    note = f"child process exited with code {process.exitcode}"
    if process.exitcode == -11 and memory_cap_bytes is not None:
        note += " (SIGSEGV: a library that does not check for failed allocations hit the cap?)"
    return {"status": "error", "note": note}
