"""Compile a Triton kernel for a real NVIDIA GPU on a machine without one, and report on it.

The interpreter (``TRITON_INTERPRET=1``) runs kernels as NumPy and cannot see what the GPU
compiler does: layouts, register pressure, spills, whether ``tl.dot`` became tensor-core
instructions. :func:`compile_for_gpu` runs Triton's real pipeline (TTIR -> TTGIR -> LLVM ->
PTX -> cubin with the ptxas that ships with Triton) for ``sm_80`` / ``sm_90`` and reads the
register count, spills and instruction mix back from the cubin, so tests catch GPU-only
compile errors and tuning starts from numbers.

Example::

    report = compile_for_gpu(_my_kernel, {"x_ptr": "*fp32", "n": "i32", "BLOCK": "constexpr"},
                             {"BLOCK": 1024}, arch=90, num_warps=4)
    report.registers, report.spill_bytes, report.count("IGMMA")
"""

from __future__ import annotations

import dataclasses
import os
import re
import subprocess
import tempfile
import types
from collections import Counter
from typing import Any

# SASS mnemonics worth counting: tensor-core MMAs (Hopper warpgroup and Ampere warp-level)
# and the bit instructions of the popcount path.
TENSOR_CORE_OPS = ("HGMMA", "IGMMA", "QGMMA", "HMMA", "IMMA", "BMMA")


@dataclasses.dataclass
class GpuCompileReport:
    """What the GPU compiler made of one kernel for one architecture."""

    name: str
    arch: int
    num_warps: int
    registers: int
    spill_store_bytes: int
    spill_load_bytes: int
    shared_bytes: int
    sass_ops: Counter
    ptx: str = dataclasses.field(repr=False)
    sass: str = dataclasses.field(repr=False)

    @property
    def spill_bytes(self) -> int:
        return self.spill_store_bytes + self.spill_load_bytes

    def count(self, mnemonic: str) -> int:
        """Number of SASS instructions whose opcode starts with ``mnemonic`` (e.g. ``"IGMMA"``)."""
        return sum(n for op, n in self.sass_ops.items() if op.startswith(mnemonic))

    @property
    def tensor_core_ops(self) -> int:
        return sum(self.count(op) for op in TENSOR_CORE_OPS)

    def summary(self) -> str:
        tc = {op: self.count(op) for op in TENSOR_CORE_OPS if self.count(op)}
        return (
            f"{self.name} sm_{self.arch} warps={self.num_warps}: {self.registers} regs, "
            f"spills {self.spill_store_bytes}B/{self.spill_load_bytes}B, shared {self.shared_bytes}B, "
            f"{sum(self.sass_ops.values())} SASS instrs, tensor-core {tc or 0}, POPC {self.count('POPC')}"
        )


def _nvidia_tool(name: str) -> str:
    import triton

    path = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", name)
    if not os.path.exists(path):
        raise FileNotFoundError(f"{name} not found at {path}; it ships with the triton wheel")
    return path


def _ptxas_path(arch: int) -> str:
    """The ptxas Triton itself uses for ``arch`` (it ships more than one)."""
    try:
        from triton.backends.nvidia.compiler import get_ptxas

        return get_ptxas(arch).path
    except ImportError:  # older Triton: one bundled ptxas
        return _nvidia_tool("ptxas")


def _ptxas_usage(ptx: str, arch: int) -> tuple[int, int, int]:
    """(registers, spill store bytes, spill load bytes) from ``ptxas -v`` on the kernel's PTX."""
    gpu = f"sm_{arch}a" if arch >= 90 else f"sm_{arch}"
    with tempfile.TemporaryDirectory() as tmp:
        src = os.path.join(tmp, "k.ptx")
        with open(src, "w") as f:
            f.write(ptx)
        out = subprocess.run(
            [_ptxas_path(arch), "-v", f"--gpu-name={gpu}", src, "-o", os.path.join(tmp, "k.cubin")],
            capture_output=True, text=True,
        )
    log = out.stdout + out.stderr
    if out.returncode != 0:
        raise RuntimeError(f"ptxas failed for sm_{arch}:\n{log}")
    regs = re.search(r"Used (\d+) registers", log)
    spills = re.search(r"(\d+) bytes spill stores, (\d+) bytes spill loads", log)
    if regs is None or spills is None:
        raise RuntimeError(f"could not read ptxas -v output:\n{log}")
    return int(regs.group(1)), int(spills.group(1)), int(spills.group(2))


def _sass(cubin: bytes) -> str:
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "k.cubin")
        with open(path, "wb") as f:
            f.write(cubin)
        return subprocess.run([_nvidia_tool("nvdisasm"), "-c", path], capture_output=True, text=True, check=True).stdout


def _as_jit_function(fn: Any, memo: dict | None = None) -> Any:
    """A real ``JITFunction`` for ``fn``, also when ``fn`` was decorated under the interpreter.

    With ``TRITON_INTERPRET=1`` set at import, ``@triton.jit`` yields ``InterpretedFunction``s,
    which the GPU compiler cannot take. This rebuilds the kernel on a copy of its globals in
    which every interpreted helper it calls is rebuilt the same way, so one process can both
    interpret kernels and compile them for a GPU. Jit helpers must be imported by name
    (``from .bits import pack_rows``), not reached as module attributes.
    """
    from triton.runtime.jit import JITFunction

    try:
        from triton.runtime.interpreter import InterpretedFunction
    except ImportError:  # pragma: no cover - every supported Triton has it
        return fn
    if not isinstance(fn, InterpretedFunction):
        return fn
    memo = {} if memo is None else memo
    if id(fn) in memo:
        return memo[id(fn)]
    py = fn.fn
    scope = dict(py.__globals__)
    clone = types.FunctionType(py.__code__, scope, py.__name__, py.__defaults__, py.__closure__)
    clone.__module__, clone.__qualname__, clone.__doc__ = py.__module__, py.__qualname__, py.__doc__
    jit = JITFunction(clone, **{k: v for k, v in fn.kwargs.items() if v is not None})
    memo[id(fn)] = jit
    for name, value in py.__globals__.items():
        if isinstance(value, InterpretedFunction):
            scope[name] = _as_jit_function(value, memo)
    return jit


_SASS_LINE = re.compile(r"/\*[0-9a-f]{4,}\*/\s+(?:@!?U?P\w+\s+)?([A-Z][A-Z0-9_]*)")


def compile_for_gpu(
    fn: Any,
    signature: dict[str, str],
    constexprs: dict[str, Any] | None = None,
    *,
    arch: int = 90,
    num_warps: int = 4,
    num_stages: int = 3,
) -> GpuCompileReport:
    """Compile ``fn`` (a ``@triton.jit`` function) for ``sm_<arch>`` and report on the result.

    ``signature`` maps every parameter to a Triton type (``"*fp32"``, ``"*i32"``, ``"i64"``,
    ``"fp32"``, ``"constexpr"``); ``constexprs`` gives the constexpr values. Raises on any
    compile error, with Triton's message.
    """
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    constexprs = dict(constexprs or {})
    src = ASTSource(fn=_as_jit_function(fn), signature=signature, constexprs=constexprs)
    kernel = triton.compile(
        src, target=GPUTarget("cuda", arch, 32), options={"num_warps": num_warps, "num_stages": num_stages}
    )
    ptx = kernel.asm["ptx"]
    regs, spill_st, spill_ld = _ptxas_usage(ptx, arch)
    sass = _sass(kernel.asm["cubin"])
    ops = Counter(m.group(1).split(".")[0] for m in _SASS_LINE.finditer(sass))
    return GpuCompileReport(
        name=kernel.name,
        arch=arch,
        num_warps=num_warps,
        registers=regs,
        spill_store_bytes=spill_st,
        spill_load_bytes=spill_ld,
        shared_bytes=int(getattr(kernel.metadata, "shared", 0)),
        sass_ops=ops,
        ptx=ptx,
        sass=sass,
    )
