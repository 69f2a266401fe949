"""Stage "pack": trace a trained model with ``torch.fx``, fuse each binary layer with what
follows it, fold scales and BatchNorm into per-channel epilogues (``pack``)."""

from .fold import PackError
from .fusion import pack

__all__ = ["PackError", "pack"]
