"""Packed export, artifacts and ONNX of bnnkit models."""

from bnnkit.export.onnx import OnnxExport, OnnxExportError, run_to_onnx, to_onnx
from bnnkit.export.onnx_modules import UnsupportedLayerError

__all__ = ["OnnxExport", "OnnxExportError", "UnsupportedLayerError", "run_to_onnx", "to_onnx"]
