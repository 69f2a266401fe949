"""Compile a Triton kernel for a real NVIDIA GPU on a machine without one, and report on it.

The interpreter (``TRITON_INTERPRET=1``) runs kernels as NumPy and cannot see what the GPU
compiler does: layouts, register pressure, spills, whether ``tl.dot`` became tensor-core
instructions. :func:`compile_for_gpu` runs Triton's real pipeline (TTIR -> TTGIR -> LLVM ->
PTX -> cubin with the ptxas that ships with Triton) for ``sm_80`` / ``sm_90`` and reads the
register count, spills and instruction mix back from the cubin, so tests catch GPU-only
compile errors and tuning starts from numbers.

Under ``TRITON_INTERPRET=1`` (how the tests run kernels on CPU) Triton builds every jit
function, its own standard library included, for the interpreter, and nothing can be
compiled for a GPU in that process; :func:`compile_for_gpu` then compiles in a fresh Python
process with the interpreter off, importing the kernel's module by name (or by file path for
modules outside a package, such as tests).

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
import json
import sys
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


_SASS_LINE = re.compile(r"/\*[0-9a-f]{4,}\*/\s+(?:@!?U?P\w+\s+)?([A-Z][A-Z0-9_]*)")


def compile_for_gpu(
    fn: Any,
    signature: dict[str, str],
    constexprs: dict[str, Any] | None = None,
    *,
    arch: int = 90,
    num_warps: int = 4,
    num_stages: int = 3,
    divisible_by_16: tuple[str, ...] = (),
) -> GpuCompileReport:
    """Compile ``fn`` (a ``@triton.jit`` function) for ``sm_<arch>`` and report on the result.

    ``signature`` maps every parameter to a Triton type (``"*fp32"``, ``"*i32"``, ``"i64"``,
    ``"fp32"``, ``"constexpr"``); ``constexprs`` gives the constexpr values.
    ``divisible_by_16`` names pointer / integer parameters to compile as 16-aligned / divisible
    by 16, as Triton's launcher specializes them at run time for aligned tensors (that is what
    lets loads vectorize). Raises on any compile error, with Triton's message.
    """
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    constexprs = dict(constexprs or {})
    if _is_interpreted(fn):
        return _compile_in_subprocess(fn, signature, constexprs, arch, num_warps, num_stages, divisible_by_16)
    attrs = {(fn.arg_names.index(name),): [["tt.divisibility", 16]] for name in divisible_by_16}
    src = ASTSource(fn=fn, signature=signature, constexprs=constexprs, attrs=attrs)
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


def _is_interpreted(fn: Any) -> bool:
    try:
        from triton.runtime.interpreter import InterpretedFunction
    except ImportError:  # pragma: no cover
        return False
    return isinstance(fn, InterpretedFunction)


def _kernel_location(fn: Any) -> dict[str, str]:
    py = fn.fn
    return {"module": py.__module__, "file": py.__code__.co_filename, "name": py.__name__}


def _load_kernel(location: dict[str, str]) -> Any:
    import importlib
    import importlib.util

    try:
        module = importlib.import_module(location["module"])
        if getattr(getattr(module, location["name"], None), "fn", None) is None:
            raise ImportError(location["module"])
    except ImportError:
        spec = importlib.util.spec_from_file_location("_bnnkit_compile_target", location["file"])
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    return getattr(module, location["name"])


@dataclasses.dataclass
class CompileRequest:
    """One kernel configuration to compile: arguments of :func:`compile_for_gpu`."""

    fn: Any
    signature: dict[str, str]
    constexprs: dict[str, Any] = dataclasses.field(default_factory=dict)
    arch: int = 90
    num_warps: int = 4
    num_stages: int = 3
    divisible_by_16: tuple[str, ...] = ()


def compile_many(requests: list[CompileRequest]) -> list[GpuCompileReport]:
    """Compile several kernels; under the interpreter in one subprocess (startup costs seconds)."""
    if not any(_is_interpreted(r.fn) for r in requests):
        return [compile_for_gpu(r.fn, r.signature, r.constexprs, arch=r.arch, num_warps=r.num_warps,
                                num_stages=r.num_stages, divisible_by_16=tuple(r.divisible_by_16)) for r in requests]
    payload = [{"location": _kernel_location(r.fn), "signature": r.signature, "constexprs": r.constexprs,
                "arch": r.arch, "num_warps": r.num_warps, "num_stages": r.num_stages,
                "divisible_by_16": list(r.divisible_by_16)} for r in requests]
    env = dict(os.environ, TRITON_INTERPRET="0")
    out = subprocess.run([sys.executable, "-m", "bnnkit.kernels.compile_check"], input=json.dumps(payload),
                         capture_output=True, text=True, env=env)
    if out.returncode != 0:
        names = ", ".join(f"{p['location']['name']}@sm_{p['arch']}" for p in payload)
        raise RuntimeError(f"compiling {names} failed:\n{out.stderr[-6000:]}")
    reports = []
    for fields in json.loads(out.stdout.strip().splitlines()[-1]):
        fields["sass_ops"] = Counter(fields["sass_ops"])
        reports.append(GpuCompileReport(**fields))
    return reports


def _compile_in_subprocess(fn: Any, signature: dict[str, str], constexprs: dict[str, Any], arch: int,
                           num_warps: int, num_stages: int, divisible_by_16: tuple[str, ...] = ()) -> GpuCompileReport:
    return compile_many([CompileRequest(fn, signature, constexprs, arch, num_warps, num_stages, divisible_by_16)])[0]


def _main() -> None:
    out = []
    for request in json.loads(sys.stdin.read()):
        report = compile_for_gpu(_load_kernel(request["location"]), request["signature"], request["constexprs"],
                                 arch=request["arch"], num_warps=request["num_warps"],
                                 num_stages=request["num_stages"],
                                 divisible_by_16=tuple(request.get("divisible_by_16", ())))
        fields = {f.name: getattr(report, f.name) for f in dataclasses.fields(report)}
        fields["sass_ops"] = dict(report.sass_ops)
        out.append(fields)
    print(json.dumps(out))


if __name__ == "__main__":
    _main()
