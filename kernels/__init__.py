"""Triton kernels of bnnkit, each with its pure-PyTorch reference (the CPU fallback).

The public entry points, re-exported here (each module documents shapes and encodings):

- binarization: ``binarize_reference`` (``+1`` for ``x >= 0``), ``pack_signs_reference`` /
  ``unpack_signs_reference`` (int32 words, LSB first), ``num_words``;
- the estimators' backward: ``sign_grad_reference``, ``EstimatorKind``;
- weights: ``scaled_binarize_forward`` / ``_backward`` and their references,
  ``weight_scale_reference``; ``pack_conv_weight`` / ``pack_linear_weight``;
- the binary GEMM and convolution: ``binary_gemm_reference``, ``binary_conv2d`` /
  ``binary_conv2d_reference``, with the fused output stage ``Epilogue``, ``SignThreshold``,
  ``KernelStage`` (its parameters in the kernels' layout), ``InputKind``, ``OutputKind``,
  ``sign_thresholds``, ``epilogue_reference``.

Four kernels share their module's name and stay in it, so that ``bnnkit.kernels.<module>``
remains the module: ``bnnkit.kernels.binarize.binarize``, ``pack_signs.pack_signs``,
``binary_gemm.binary_gemm``, ``sign_grad.sign_grad``.

Triton reads ``TRITON_INTERPRET`` when it is imported: set it before importing bnnkit.kernels
(or anything that imports it, such as ``bnnkit.export``).
"""

from .binarize import binarize_reference
from .binary_conv import binary_conv2d, binary_conv2d_reference
from .binary_gemm import binary_gemm_reference
from .bitpack import num_words, pack_signs_reference, unpack_signs_reference
from .epilogue import (Epilogue, KernelStage, OutputKind, SignThreshold, epilogue_reference, sign_thresholds,
                       threshold_sign_reference)
from .kinds import EstimatorKind, InputKind
from .sign_grad import sign_grad_reference
from .weight_binarize import (scaled_binarize_backward, scaled_binarize_backward_reference, scaled_binarize_forward,
                              scaled_binarize_forward_reference, weight_scale_reference)
from .weight_pack import pack_conv_weight, pack_linear_weight

__all__ = ["Epilogue", "EstimatorKind", "InputKind", "KernelStage", "OutputKind", "SignThreshold", "binarize_reference",
           "binary_conv2d", "binary_conv2d_reference", "binary_gemm_reference", "epilogue_reference",
           "num_words", "pack_conv_weight", "pack_linear_weight", "pack_signs_reference",
           "scaled_binarize_backward", "scaled_binarize_backward_reference", "scaled_binarize_forward",
           "scaled_binarize_forward_reference", "sign_grad_reference", "sign_thresholds",
           "threshold_sign_reference", "unpack_signs_reference",
           "weight_scale_reference"]
