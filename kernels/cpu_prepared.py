"""Weights in the native CPU kernels' layout, prepared once per weight tensor and reused.

A packed layer's ``weight_bits`` buffer is the artifact format (int32 words); the native
kernels read it rearranged (uint64 rows, im2col order for convolutions). The rearranged form
is derived on the first call and kept, keyed by the tensor object and its version counter,
which every in-place write bumps (``copy_``, ``load_state_dict``, ``pack`` filling buffers):
such a write makes the next call derive it again, so nothing goes stale. A tensor that is
freed takes its entry with it. Inference tensors (made under ``torch.inference_mode``) have
no version counter; theirs is derived on every call (correct, slower).
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Callable, Hashable
from typing import Any

import torch


class PreparedWeights:
    """``get(weight, key, build)``: ``build(weight)`` for this tensor, its contents and ``key``,
    computed once while the tensor is unchanged."""

    def __init__(self) -> None:
        self._entries: dict[int, tuple[weakref.ref, tuple, Any]] = {}
        self._lock = threading.RLock()  # re-entrant: a weakref callback may run inside a locked block

    def get(self, weight: torch.Tensor, key: Hashable, build: Callable[[torch.Tensor], Any]) -> Any:
        if weight.is_inference():
            return build(weight)
        ident = id(weight)
        stamp = (weight._version, weight.data_ptr(), tuple(weight.shape), tuple(weight.stride()), weight.dtype, key)
        entry = self._entries.get(ident)
        if entry is not None and entry[0]() is weight and entry[1] == stamp:
            return entry[2]
        value = build(weight)
        entries = self._entries

        def forget(_ref, ident=ident) -> None:
            with self._lock:
                current = entries.get(ident)
                if current is not None and current[0] is _ref:
                    del entries[ident]

        with self._lock:
            self._entries[ident] = (weakref.ref(weight, forget), stamp, value)
        return value

    def __len__(self) -> int:
        return len(self._entries)

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()


PREPARED = PreparedWeights()
"""The process-wide cache the native launchers use."""
