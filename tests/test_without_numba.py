"""Without numba the packed model still runs on CPU, on the PyTorch reference, after one
warning line; ``BNNKIT_BACKEND=cpu`` says what is missing."""

import subprocess
import sys
import textwrap

SCRIPT = textwrap.dedent('''
    import importlib.abc, sys, warnings

    class NoNumba(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name == "numba" or name.startswith("numba."):
                raise ImportError(f"No module named {name!r} (blocked by the test)")
            return None

    sys.meta_path.insert(0, NoNumba())
    import torch, bnnkit
    from bnnkit.backend import native_cpu_available, use_backend
    from bnnkit.export import pack

    assert not native_cpu_available()
    torch.manual_seed(0)
    model = bnnkit.models.create("digits_mlp", hidden=48).eval()
    packed = pack(model)
    x = torch.randn(4, 1, 8, 8)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with torch.no_grad():
            got = packed(x)
            packed(x)
    lines = [str(w.message) for w in caught if "bnnkit" in str(w.message)]
    assert len(lines) == 1 and "numba does not import" in lines[0], lines
    with torch.no_grad(), use_backend("torch"):
        assert torch.equal(got, packed(x))
    try:
        with torch.no_grad(), use_backend("cpu"):
            packed(x)
    except RuntimeError as e:
        assert "BNNKIT_BACKEND=cpu" in str(e) and "pip install numba" in str(e), e
    else:
        raise AssertionError("BNNKIT_BACKEND=cpu without numba did not raise")
    assert not any(m == "numba" or m.startswith("numba.") for m in sys.modules)
    print("ok")
''')


def test_packed_model_runs_the_reference_without_numba():
    out = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.strip().endswith("ok"), out.stdout + out.stderr
