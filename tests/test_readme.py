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
