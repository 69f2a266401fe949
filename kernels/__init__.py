"""Triton kernels of bnnkit, each with its pure-PyTorch reference (the CPU fallback)."""
