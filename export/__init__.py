"""Packed export of bnnkit models: ``pack(model) -> PackedModel``, ``PackedModel.save(dir)``,
``load(dir)``; the artifact format is described in docs/format.md.

Example::

    import bnnkit, bnnkit.export
    model = bnnkit.models.create("resnet20")       # ... trained
    packed = bnnkit.export.pack(model, architecture={"name": "resnet20", "kwargs": {}})
    packed.save("resnet20.packed")
    same = bnnkit.export.load("resnet20.packed")
"""

from .fold import PackError
from .layers import PackedConv2d, PackedLinear
from .model import FORMAT_KIND, FORMAT_VERSION, PackedModel, load
from .pack import pack

__all__ = ["FORMAT_KIND", "FORMAT_VERSION", "PackError", "PackedConv2d", "PackedLinear", "PackedModel", "load",
           "pack"]
