"""The README's Python example runs and prints what it says; its zoo table matches the models."""

import os
import re
import subprocess
import sys

from bnnkit import models

README = os.path.join(os.path.dirname(__file__), os.pardir, "README.md")


def readme() -> str:
    with open(README) as f:
        return f.read()


def test_python_example_runs_and_prints_its_comment(tmp_path):
    code = re.search(r"## Python\n\n```python\n(.*?)```", readme(), re.S).group(1)
    script = tmp_path / "example.py"
    script.write_text(code)
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, check=True, cwd=tmp_path)
    claimed = re.search(r"print\(x.grad\)\s+# (\[.*?\])", code).group(1)
    assert out.stdout.strip() == f"tensor({claimed})"


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


def test_packed_export_example_runs(tmp_path):
    code = re.search(r"## Packed export\n\n```python\n(.*?)```", readme(), re.S).group(1)
    script = tmp_path / "packed_example.py"
    script.write_text(code + "import os\nprint(sorted(os.listdir('resnet20.packed')), tuple(logits.shape))\n")
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, check=True, cwd=tmp_path)
    assert out.stdout.strip() == "['manifest.json', 'model.safetensors'] (8, 10)"


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
