"""Without Triton (it ships for Linux only) bnnkit imports and runs its PyTorch path."""

import subprocess
import sys
import textwrap

SCRIPT = textwrap.dedent('''
    import importlib.abc, sys

    class NoTriton(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name == "triton" or name.startswith("triton."):
                raise ImportError(f"No module named {name!r} (blocked by the test)")
            return None

    sys.meta_path.insert(0, NoTriton())
    import torch, bnnkit
    from bnnkit.backend import triton_available, use_backend
    from bnnkit.kernels import binarize as kbin
    from bnnkit.kernels.triton_compat import HAS_TRITON

    assert not HAS_TRITON and not triton_available()
    model = bnnkit.models.create("digits_cnn", channels=4)
    out = model(torch.randn(3, 1, 8, 8))
    out.sum().backward()
    assert model.conv1.weight.grad is not None
    x = torch.tensor([-1.0, 0.0, 2.0], requires_grad=True)
    bnnkit.functional.reste_sign(x, o=2.0).sum().backward()
    assert x.grad.tolist()[2] == 0.0
    try:
        with use_backend("triton"):
            bnnkit.functional.reste_sign(x, o=2.0)
    except RuntimeError as e:
        assert "triton package is not installed" in str(e), e
    else:
        raise AssertionError("forced triton backend without triton did not raise")
    import bnnkit.export
    model.eval()
    packed = bnnkit.export.pack(model)
    x = torch.randn(3, 1, 8, 8)
    torch.testing.assert_close(packed(x), model(x), rtol=1e-4, atol=1e-5)
    try:
        kbin.binarize(torch.randn(4))
    except ImportError as e:
        assert "not installed" in str(e), e
    else:
        raise AssertionError("a kernel launch without triton did not raise")
    print("ok")
''')


def test_bnnkit_runs_without_triton():
    out = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.strip().endswith("ok"), out.stdout + out.stderr
