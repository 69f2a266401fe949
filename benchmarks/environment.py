"""What every benchmark row records about where and when it was measured.

Device name, library versions, git commit and date. Called by the runner when a run starts,
never at import time (no GPU queries on import).
"""

from __future__ import annotations

import datetime
import os
import platform
import re
import subprocess
import uuid
from importlib import metadata

import torch

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
COMMIT_ENV_VAR = "BNNKIT_COMMIT"
UNKNOWN_COMMIT = "unknown"


def cpu_name() -> str:
    """The CPU model as the kernel reports it (``/proc/cpuinfo``), else ``platform.processor()``."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


ISA_FLAGS = ("sse4_2", "popcnt", "bmi2", "avx", "avx2", "fma", "avx512f", "avx512bw", "avx512vl", "avx512_vnni",
             "avx512_bitalg", "avx512_vpopcntdq", "amx_int8", "asimd", "asimddp", "sve", "sve2")
"""The instruction-set flags that decide how fast the native CPU kernels and the float baselines run."""


def cpu_isa() -> str:
    """The CPU's :data:`ISA_FLAGS` present (``/proc/cpuinfo`` flags / Features), space separated;
    else the target LLVM sees (``llvmlite``), else ``"unknown"``."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key = line.split(":", 1)[0].strip()
                if key in ("flags", "Features"):
                    present = set(line.split(":", 1)[1].split())
                    return " ".join(flag for flag in ISA_FLAGS if flag in present)
    except OSError:
        pass
    try:
        from llvmlite import binding as llvm

        features = llvm.get_host_cpu_features()
        return f"{llvm.get_host_cpu_name()}: " + " ".join(sorted(k for k, v in features.items() if v))
    except Exception:  # no llvmlite, or a platform it cannot describe
        return "unknown"


def device_name(device: torch.device) -> str:
    """``torch.cuda.get_device_name`` for CUDA devices, the CPU model for ``cpu``."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    if device.type == "cpu":
        return cpu_name()
    raise ValueError(f"benchmarks run on 'cuda' or 'cpu' devices, got {device}")


def device_slug(name: str) -> str:
    """File-name form of a device name: ``"NVIDIA H100 80GB HBM3"`` -> ``"nvidia-h100-80gb-hbm3"``."""
    slug = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")
    if not slug:
        raise ValueError(f"device name {name!r} has no letters or digits to name a results file after")
    return slug


def package_version(name: str) -> str | None:
    """Installed version of distribution ``name``, or None when it is not installed."""
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def library_versions() -> dict[str, str | None]:
    """torch, triton, onnxruntime, CUDA (as torch was built) and numba versions; None where absent."""
    try:
        import triton

        triton_version = triton.__version__
    except ImportError:
        triton_version = None
    try:
        import onnxruntime

        ort_version = onnxruntime.__version__
    except ImportError:
        ort_version = None
    return {"torch": torch.__version__, "triton": triton_version, "onnxruntime": ort_version,
            "cuda": torch.version.cuda, "numba": package_version("numba")}


def git_commit(repo: str = REPO_ROOT) -> tuple[str, bool | None]:
    """``(commit, dirty)`` of the source tree.

    ``$BNNKIT_COMMIT`` wins (for copies of the tree without ``.git``); otherwise ``git
    rev-parse HEAD`` in ``repo``; ``("unknown", None)`` when neither is available.
    ``dirty`` is True when tracked files differ from the commit.
    """
    forced = os.environ.get(COMMIT_ENV_VAR, "").strip()
    if forced:
        return forced, None

    def git(*args: str) -> str:
        return subprocess.run(["git", "-C", repo, *args], capture_output=True, text=True, check=True,
                              timeout=10).stdout.strip()

    try:
        commit = git("rev-parse", "HEAD")
        dirty = bool(git("status", "--porcelain", "--untracked-files=no"))
    except (OSError, subprocess.SubprocessError):
        return UNKNOWN_COMMIT, None
    return commit, dirty


def run_metadata(device: torch.device, quick: bool) -> dict:
    """The fields every row of one run shares (``run_id`` identifies the run)."""
    commit, dirty = git_commit()
    meta = {
        "device": device_name(device),
        "device_type": device.type,
        **library_versions(),
        "python": platform.python_version(),
        "commit": commit,
        "dirty": dirty,
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "quick": quick,
        "run_id": uuid.uuid4().hex[:12],
    }
    if device.type == "cpu":
        meta["cpu_threads"] = torch.get_num_threads()
        meta["cpu_cores"] = os.cpu_count()
        meta["cpu_isa"] = cpu_isa()
    if hasattr(os, "getloadavg"):  # CPU figures from a busy host are slower: say how busy it was
        meta["load_avg"] = round(os.getloadavg()[0], 2)
    return meta
