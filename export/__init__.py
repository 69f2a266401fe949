"""Packed export, artifacts and ONNX of bnnkit models."""
