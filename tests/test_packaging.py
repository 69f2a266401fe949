"""pyproject lists every package, with kernels/, export/ and benchmarks/ mapped under bnnkit."""

import os
import pytest

tomllib = pytest.importorskip("tomllib")  # Python >= 3.11

ROOT = os.path.join(os.path.dirname(__file__), os.pardir)
MAPPED = {"kernels": "bnnkit.kernels", "export": "bnnkit.export", "benchmarks": "bnnkit.benchmarks"}


def packages_on_disk():
    found = set()
    for top in ["bnnkit", *MAPPED]:
        for dirpath, _, files in os.walk(os.path.join(ROOT, top)):
            if "__init__.py" in files:
                rel = os.path.relpath(dirpath, ROOT).split(os.sep)
                prefix = MAPPED.get(rel[0], rel[0])
                found.add(".".join([prefix, *rel[1:]]))
    return found


def test_every_package_is_listed_and_mapped():
    with open(os.path.join(ROOT, "pyproject.toml"), "rb") as f:
        tool = tomllib.load(f)["tool"]["setuptools"]
    assert set(tool["packages"]) == packages_on_disk()
    for directory, package in MAPPED.items():
        assert tool["package-dir"][package] == directory
    assert not any(p in ("kernels", "export", "benchmarks") for p in tool["packages"])
