"""bnnkit: binary neural networks for PyTorch, trained with ReSTE and deployed packed."""

from bnnkit.version import __version__

__all__ = ["__version__"]
