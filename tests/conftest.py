"""Test set-up: without a GPU, Triton kernels run in Triton's interpreter.

TRITON_INTERPRET must be set before any kernel module is imported (Triton decides at
decoration time), hence here, at the top of conftest. GPU compile tests still compile real
kernels: bnnkit.kernels.compile_check does that in a subprocess with the interpreter off.
"""

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
# Triton 3.9 warns when this is unset; "1" keeps its current default (FMA fusion on).
os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "1")

