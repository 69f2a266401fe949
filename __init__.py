"""Not part of the package: the root of a bnnkit source checkout.

Python looks for modules in the current directory first. Run from the folder that holds a
checkout named ``bnnkit``, ``import bnnkit`` would find this folder before the installed
package, and since setuptools' editable install (with bnnkit's package-dir mapping) is found
only after the current directory, it would get an empty namespace package. This file makes the
folder a regular package that hands the import over to the installed bnnkit (the editable
install of this checkout or any other), or says what happened when none is installed.
"""

import importlib.machinery
import importlib.util
import os
import sys


def _installed_spec(here: str):
    """The spec the import system would find for ``bnnkit`` without this checkout's folder."""
    shadowing = os.path.realpath(os.path.dirname(here))
    for finder in sys.meta_path:
        if finder is importlib.machinery.PathFinder:
            path = [p for p in sys.path if os.path.realpath(p or os.curdir) != shadowing]
            spec = finder.find_spec(__name__, path)
        elif hasattr(finder, "find_spec"):
            spec = finder.find_spec(__name__, None)
        else:
            continue
        if spec is not None and spec.origin not in (None, "namespace") and \
                os.path.realpath(spec.origin) != os.path.realpath(__file__):
            return spec
    return None


def _hand_over() -> None:
    here = os.path.dirname(os.path.abspath(__file__))
    spec = _installed_spec(here)
    if spec is None:
        raise ImportError(f"{here!r} is a source checkout of bnnkit, not the package: Python found it because the "
                          f"current directory comes first, and no installed bnnkit was found. Install it "
                          f"(pip install -e {here}) or run from another directory.", name=__name__)
    module = importlib.util.module_from_spec(spec)
    sys.modules[__name__] = module  # what `import bnnkit` returns once this file has run
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[__name__]
        raise


if __name__ == "bnnkit":
    _hand_over()
