"""Binary layers: drop-in subclasses of torch.nn layers."""

from bnnkit.nn.layers import BinaryConv2d, BinaryLayer, BinaryLinear, binary_layers

__all__ = ["BinaryConv2d", "BinaryLayer", "BinaryLinear", "binary_layers"]
