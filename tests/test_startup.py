"""Start-up: ``import bnnkit`` and the command line's parsers import no torch (PEP 562 lazy
names; the parsers' choices come from the torch-free ``bnnkit.choices``, which must equal
the registries it mirrors); a checkout named ``bnnkit`` in the current directory does not
shadow the installed package."""

import json
import os
import subprocess
import sys

import pytest

import bnnkit
from bnnkit import choices
from bnnkit.cli import COMMANDS

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), os.pardir))
HEAVY = ("torch", "triton", "onnx", "onnxruntime", "numpy", "sklearn")


def _imported_after(code: str, cwd: str | None = None, *python_flags: str) -> list[str]:
    """The heavy modules a fresh interpreter has imported after running ``code``."""
    probe = f"{code}\nimport json, sys\nprint(json.dumps([m for m in {HEAVY!r} if m in sys.modules]))"
    out = subprocess.run([sys.executable, *python_flags, "-c", probe], capture_output=True, text=True, cwd=cwd,
                         timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout.splitlines()[-1])


def _cli(argv: list[str]) -> str:
    return f"from bnnkit.cli import main\ntry:\n    main({argv!r})\nexcept SystemExit:\n    pass"


@pytest.mark.parametrize("argv", [["--version"], ["--help"], [], *([c, "--help"] for c in COMMANDS),
                                  ["study", "estimators", "--help"], ["train", "--model", "nope", "--out", "x"]])
def test_the_command_line_answers_without_importing_torch(argv):
    assert _imported_after(_cli(argv)) == []


def test_import_bnnkit_is_lazy_and_every_public_name_resolves():
    assert _imported_after("import bnnkit; bnnkit.__version__") == []
    for name in bnnkit.__all__:
        assert getattr(bnnkit, name) is not None, name
    assert set(bnnkit.__all__) <= set(dir(bnnkit))
    model = bnnkit.models.create("digits_mlp")  # `import bnnkit` is enough for the sub-modules
    assert bnnkit.nn.binary_layers is not None and sum(1 for _ in bnnkit.nn.binary_layers(model)) > 0
    assert bnnkit.train.TrainConfig is bnnkit.train.config.TrainConfig
    with pytest.raises(AttributeError, match="has no attribute 'nothing_here'"):
        bnnkit.nothing_here  # noqa: B018


def test_the_torch_free_choices_equal_their_registries():
    import bnnkit.data
    import bnnkit.predict
    from bnnkit.cli.validate_cmd import DEFAULT_TOLERANCE
    from bnnkit.estimators import list_estimators
    from bnnkit.export import RELATIVE_TOLERANCE
    from bnnkit.export.validation.runtimes import RUNTIMES, resolve_onnxruntime
    from bnnkit.kernels.weight_binarize import SCALE_MODES
    from bnnkit.models import list_models

    assert choices.MODELS == tuple(list_models())
    assert choices.DATASETS == bnnkit.data.DATASETS
    assert choices.ESTIMATORS == tuple(list_estimators())
    assert choices.SCALE_MODES == SCALE_MODES
    assert bnnkit.predict.RUNTIME_CHOICES == choices.PREDICT_RUNTIMES
    assert set(choices.VALIDATE_RUNTIMES) - {"onnxruntime"} == set(RUNTIMES)
    assert resolve_onnxruntime("onnxruntime") in RUNTIMES and resolve_onnxruntime("packed") == "packed"
    assert DEFAULT_TOLERANCE == RELATIVE_TOLERANCE


def test_models_registered_in_the_process_are_choices_of_the_command_line():
    from bnnkit.models import register_model, registry

    assert "digits_mlp" in choices.MODEL_CHOICES and "startup_test_model" not in choices.MODEL_CHOICES
    register_model("startup_test_model", (1, 8, 8), 10, "digits", "a test's model")(lambda **kw: None)
    try:
        assert "startup_test_model" in choices.MODEL_CHOICES and "startup_test_model" in list(choices.MODEL_CHOICES)
    finally:
        del registry._MODELS["startup_test_model"]


def test_a_checkout_named_bnnkit_in_the_working_directory_hands_over_to_the_installed_package(tmp_path):
    """Python looks in the current directory first: a folder ``bnnkit`` there that holds this
    checkout used to shadow the editable install as an empty namespace package."""
    (tmp_path / "bnnkit").symlink_to(ROOT, target_is_directory=True)
    code = ("import bnnkit, os\n"
            "print(os.path.realpath(bnnkit.__file__), bnnkit.OSchedule.__name__, bnnkit.kernels.__name__)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == [os.path.realpath(bnnkit.__file__), "OSchedule", "bnnkit.kernels"]
    # without any installed bnnkit (-S: no site-packages), the import says what happened
    out = subprocess.run([sys.executable, "-S", "-c", "import bnnkit"], capture_output=True, text=True,
                         cwd=tmp_path, timeout=120)
    assert out.returncode == 1
    assert "is a source checkout of bnnkit, not the package" in out.stderr
    assert "run from another directory" in out.stderr
