"""Extras keep the install a user chose: ``pip install -e ".[vision,plot]"`` in the environment the
README set up (a CPU torch) installs no torch, torchvision or CUDA package."""

import json
import os
import subprocess
import sys

import pytest

tomllib = pytest.importorskip("tomllib")  # Python >= 3.11

ROOT = os.path.join(os.path.dirname(__file__), os.pardir)
TORCH_FAMILY = ("torch", "torchvision", "torchaudio", "triton")


def _name(requirement: str) -> str:
    for sep in "<>=!~;[ ":
        requirement = requirement.split(sep)[0]
    return requirement.strip().lower()


def test_no_extra_asks_for_a_torch_package():
    with open(os.path.join(ROOT, "pyproject.toml"), "rb") as f:
        extras = tomllib.load(f)["project"]["optional-dependencies"]
    for extra, requirements in extras.items():
        named = [r for r in requirements if _name(r) in TORCH_FAMILY or _name(r).startswith("nvidia-")]
        assert not named, f"extra {extra!r} asks for {named}: pip could replace the installed torch build"


def test_pip_would_install_nothing_but_bnnkit_for_the_extras(tmp_path):
    """What ``pip install -e ".[vision,plot]"`` would do here, asked of pip itself (--dry-run: nothing
    changes). In CI this environment is the README's fresh CPU set-up."""
    import torch

    report = tmp_path / "report.json"
    done = subprocess.run([sys.executable, "-m", "pip", "install", "--dry-run", "--quiet", "--report", str(report),
                           "-e", f"{os.path.abspath(ROOT)}[vision,plot]"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    planned = {item["metadata"]["name"].lower(): item["metadata"]["version"]
               for item in json.loads(report.read_text())["install"]}
    touched = sorted(n for n in planned if n in TORCH_FAMILY or n.startswith("nvidia-"))
    assert not touched, f"would install {[(n, planned[n]) for n in touched]} beside torch {torch.__version__}"
    assert "bnnkit" in planned
