"""``bnnkit.export`` and ``bnnkit.kernels`` re-export their public functions without hiding a
sub-module behind a function of the same name."""

import importlib
import pkgutil
import types

import pytest


@pytest.mark.parametrize("package", ["bnnkit.export", "bnnkit.kernels"])
def test_public_names_resolve_and_submodules_stay_modules(package):
    pkg = importlib.import_module(package)
    assert pkg.__all__ and all(getattr(pkg, name, None) is not None for name in pkg.__all__)
    for info in pkgutil.iter_modules(pkg.__path__):
        module = importlib.import_module(f"{package}.{info.name}")
        assert getattr(pkg, info.name) is module, f"{package}.{info.name} is hidden by a re-exported name"


def test_the_pipeline_is_reachable_from_the_packages():
    import bnnkit.export as export
    import bnnkit.kernels as kernels

    for name in ("pack", "load", "to_onnx", "export_run", "validate", "validate_artifact", "compare_outputs",
                 "PackError", "PackedModel"):
        assert callable(getattr(export, name)), name
    for name in ("binary_conv2d", "binary_gemm_reference", "binary_conv2d_reference",
                 "sign_thresholds", "pack_conv_weight", "pack_linear_weight", "binarize_reference"):
        assert isinstance(getattr(kernels, name), types.FunctionType), name
