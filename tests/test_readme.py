"""The README's code runs: each Python block on its own, in a fresh process, twice in a row
(the second run meets the files of the first); the Python example prints what it says; the
zoo table and artifact sizes match the models. (The bash blocks install the package or need a
GPU or hours; CI runs the test command itself.)"""

import os
import re
import subprocess
import sys

from bnnkit import models

README = os.path.join(os.path.dirname(__file__), os.pardir, "README.md")


def readme() -> str:
    with open(README) as f:
        return f.read()


def python_blocks() -> dict[str, str]:
    """Each ```python block of the README under the title of its section."""
    blocks = {}
    for title, body in re.findall(r"^## (.+?)\n(.*?)(?=^## |\Z)", readme(), re.M | re.S):
        for i, code in enumerate(re.findall(r"```python\n(.*?)```", body, re.S)):
            blocks[title if i == 0 else f"{title} #{i + 1}"] = code
    return blocks


def test_the_readme_has_its_python_blocks():
    assert {"Python", "Packed export", "ONNX", "Validation"} <= set(python_blocks())


def test_every_python_block_runs_on_its_own_twice(tmp_path):
    """All blocks' first runs side by side (each in its own directory), then all second runs."""
    blocks = python_blocks()
    outputs = {}
    for attempt in ("first", "second"):
        running = {}
        for title, code in blocks.items():
            directory = tmp_path / re.sub(r"\W+", "_", title)
            directory.mkdir(exist_ok=True)
            (directory / "block.py").write_text(code)
            running[title] = subprocess.Popen([sys.executable, "block.py"], cwd=directory, text=True,
                                              stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        for title, proc in running.items():
            out, err = proc.communicate(timeout=600)
            assert proc.returncode == 0, f"README block of '{title}' failed on the {attempt} run:\n{err[-3000:]}"
            outputs[title, attempt] = out
    claimed = re.search(r"print\(x.grad\)\s+# (\[.*?\])", blocks["Python"]).group(1)
    assert outputs["Python", "first"].strip() == outputs["Python", "second"].strip() == f"tensor({claimed})"
    assert sorted(os.listdir(tmp_path / "Packed_export" / "resnet20.packed")) == ["manifest.json", "model.safetensors"]


def test_zoo_table_parameter_counts():
    rows = re.findall(r"^\| ([`a-z0-9_, ]+) \| [^|]+ \| ([0-9, /]+) \|$", readme(), re.M)
    assert rows
    for names, counts in rows:
        names = [n.strip(" `") for n in names.split(",")]
        counts = [int(c.replace(",", "")) for c in counts.split("/")]
        if len(counts) == 1:
            counts = counts * len(names)
        for name, count in zip(names, counts):
            assert sum(p.numel() for p in models.create(name).parameters()) == count, name


def test_ci_runs_the_readme_test_command():
    ci = open(os.path.join(os.path.dirname(README), ".ci", "run")).read()
    assert "<!-- test-command -->" in ci and "<!-- test-command -->" in readme()


def test_artifact_size_table_matches_the_zoo(tmp_path):
    """The README's artifact sizes are what pack(...).save(DIR) writes today (within 1%: the
    manifest records the bnnkit version)."""
    from bnnkit.export import pack
    from bnnkit.export.runtime.sizes import artifact_bytes

    section = readme().split("## Packed export", 1)[1].split("\n## ", 1)[0]
    rows = re.findall(r"^\| ([a-z0-9_]+)[^|]* \| ([0-9,]+) bytes \| ([0-9,]+) bytes \| ([0-9.]+)x \|$", section, re.M)
    assert len(rows) >= 3
    for name, artifact, fp32, ratio in rows:
        packed = pack(models.create(name).eval(), architecture={"name": name, "kwargs": {}})
        packed.save(tmp_path / name)
        measured = artifact_bytes(str(tmp_path / name))
        assert abs(measured - int(artifact.replace(",", ""))) <= 0.01 * measured, name
        assert packed.fp32_state_bytes == int(fp32.replace(",", "")), name
        assert abs(float(ratio) - packed.fp32_state_bytes / measured) < 0.2, name
