"""One build (a kernel specialised for one architecture), compiled, and what its cubin reports."""

from __future__ import annotations

import importlib
import json
import re
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class Build:
    """One kernel specialisation for one architecture, and what its compile reported."""

    arch: int
    kernel: str
    module: str
    signature: dict
    constexprs: dict
    attrs: dict
    options: dict
    cases: list = field(default_factory=list)
    ranks: dict = field(default_factory=dict)
    ok: bool = False
    error: str = ""
    shared_bytes: int = -1
    registers: int = -1
    local_bytes: int = -1
    wgmma: int = 0
    seconds: float = 0.0

    def key(self) -> str:
        return json.dumps(
            [self.arch, self.module, self.kernel, self.signature, self.constexprs,
             self.attrs, self.options],
            sort_keys=True, default=str,
        )  # fmt: skip

    def config(self) -> str:
        c, o = self.constexprs, self.options
        blocks = "x".join(str(c[n]) for n in ("BLOCK_M", "BLOCK_N") if n in c)
        return f"{blocks} w{o.get('num_warps')} s{o.get('num_stages')}"


def _cuobjdump() -> str:
    import triton

    return str(Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump")


def _resources(cubin: bytes) -> dict[str, int]:
    """REG, STACK, SHARED, LOCAL as ``cuobjdump -res-usage`` reports them for the cubin."""
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        report = subprocess.run(
            [_cuobjdump(), "-res-usage", f.name], capture_output=True, text=True, check=True
        ).stdout
    return {
        name: int(value) for name, value in re.findall(r"(REG|STACK|SHARED|LOCAL):(\d+)", report)
    }


def compile_build(build: Build) -> Build:
    """Compile one build and fill in what its cubin reports (or the error)."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    kernel = getattr(importlib.import_module(build.module), build.kernel)
    start = time.perf_counter()
    try:
        constexprs = {(kernel.arg_names.index(n),): v for n, v in build.constexprs.items()}
        attrs = {(kernel.arg_names.index(n),): v for n, v in build.attrs.items()}
        compiled = triton.compile(
            ASTSource(kernel, build.signature, constexprs, attrs),
            target=GPUTarget("cuda", build.arch, 32),
            options=build.options,
        )
        res = _resources(compiled.asm["cubin"])
        build.registers = res.get("REG", -1)
        build.local_bytes = res.get("STACK", 0) + res.get("LOCAL", 0)
        build.shared_bytes = compiled.metadata.shared + res.get("SHARED", 0)
        build.wgmma = len(re.findall(r"wgmma\.mma_async", compiled.asm["ptx"]))
        build.ok = True
    except Exception as err:  # the gate reports every failure, it does not stop at the first
        build.error = f"{type(err).__name__}: {err}".strip()[:2000]
    build.seconds = time.perf_counter() - start
    return build
