"""Stage "run": the packed layers, the ``torch.ops.bnnkit.packed_*`` ops they call, the
``PackedModel`` and its artifact (``save`` / ``load``, docs/format.md)."""

from .layers import PackedConv2d, PackedLayer, PackedLinear
from .model import FORMAT_KIND, FORMAT_VERSION, PackedModel, load, read_manifest

__all__ = ["FORMAT_KIND", "FORMAT_VERSION", "PackedConv2d", "PackedLayer", "PackedLinear", "PackedModel", "load",
           "read_manifest"]
