"""What the trust tests attack with: hostile strings carrying a marker-file payload, a watchdog
that turns a hang into a failure, and the resealing an attacker who crafts a file would do
(recomputing every checksum and size the reader checks)."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import signal
from collections.abc import Iterator
from typing import Any


def small_model():
    """A packable model outside the zoo (conv stem, BatchNorm, pad, binary conv, max pool,
    binary linear), small enough to save and load in milliseconds; input (N, 1, 8, 8)."""
    import torch
    from torch import nn

    from bnnkit.nn import BinaryConv2d, BinaryLinear

    class Small(nn.Module):
        def __init__(self):
            super().__init__()
            self.stem = nn.Conv2d(1, 8, 3, padding=1)
            self.bn = nn.BatchNorm2d(8)
            self.conv = BinaryConv2d(8, 16, 3, padding=1)
            self.head = BinaryLinear(16 * 5 * 5, 10)

        def forward(self, x):
            x = nn.functional.pad(self.bn(self.stem(x)), (1, 1, 1, 1))
            x = nn.functional.max_pool2d(torch.relu(self.conv(x)), 2)
            return self.head(torch.flatten(x, 1))

    return Small()


def hostile_strings(marker: os.PathLike | str) -> list[str]:
    """Strings that would run ``open(marker, 'w')`` if pasted into Python source, or that probe
    names, quoting, comments, look-alikes and sizes."""
    m = str(marker)
    code = f"open({m!r}, 'w')"
    return [
        f"inplace=False)\n{code}#",  # the kwargs-key injection that ran through torch.fx codegen
        f"x\n{code}\n",
        f"'); {code}; ('",
        f'"); {code}; ("',
        f"a) or {code} or (b",
        f"__import__('os').system('touch {m}')",
        "#", "(", "'", "\\", "\n", "", "\x00",
        "\u0456nplace",  # Cyrillic i
        "\uff49\uff4e\uff50\uff4c\uff41\uff43\uff45",  # fullwidth "inplace"
        "__class__", "__globals__", "self", "forward", "lambda", "out", "_program",
        "a" * 100_000,
        "../../etc/passwd",
    ]


class Hang(AssertionError):
    """A call did not return within its time: what a read of a FIFO or an unbounded loop does."""


@contextlib.contextmanager
def no_hang(seconds: float) -> Iterator[None]:
    """Fail (raise :class:`Hang`) if the block runs longer than ``seconds`` (main thread only;
    a blocking ``open`` of a FIFO is interrupted too). Generous bounds: only a hang trips it."""
    def alarm(signum, frame):
        raise Hang(f"did not finish within {seconds} s")

    previous = signal.signal(signal.SIGALRM, alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def one_line(err: str) -> str:
    """The stderr of a refused command: exactly one line, no traceback. Returns it."""
    assert "Traceback" not in err, err[-3000:]
    lines = err.strip().splitlines()
    assert len(lines) == 1, err[-3000:]
    return lines[0]


def cli(args: list[str], capsys) -> tuple[int, str, str]:
    from bnnkit.cli import main

    code = main(args)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def file_entry(path: os.PathLike | str) -> dict[str, Any]:
    data = open(path, "rb").read()
    return {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}


def edit_json(path: os.PathLike | str, edit) -> None:
    doc = json.load(open(path))
    edit(doc)
    with open(path, "w") as f:
        json.dump(doc, f)


def reseal_export(directory: os.PathLike | str, rel: str) -> None:
    """Record ``rel``'s current size and SHA-256 in the export's manifest, as an attacker would."""
    edit_json(os.path.join(directory, "manifest.json"),
              lambda m: m["files"].__setitem__(rel, file_entry(os.path.join(directory, rel))))


def reseal_run(run_dir: os.PathLike | str, name: str) -> None:
    """Record ``name``'s current SHA-256 in the run manifest, as an attacker would."""
    digest = file_entry(os.path.join(run_dir, name))["sha256"]
    edit_json(os.path.join(run_dir, "run-manifest.json"), lambda m: m["files"].__setitem__(name, digest))


def rewrite_checkpoint_header(path: os.PathLike | str, edit, edit_tensors=None) -> None:
    """Change the progress a checkpoint's header records (``edit(state)`` in place; and its
    tensors with ``edit_tensors(tensors)``) and recompute the sha256 the checkpoint records,
    as an attacker would."""
    from bnnkit.artifacts import read_tensors, tensor_bytes
    from bnnkit.train.checkpoint import _DIGEST_KEY, _HEADER_KEY, _tensor_digest
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        header = json.loads(f.metadata()[_HEADER_KEY])
    tensors = read_tensors(str(path))
    edit(header)
    if edit_tensors is not None:
        edit_tensors(tensors)
    text = json.dumps(header)
    data = tensor_bytes(tensors, {_HEADER_KEY: text, _DIGEST_KEY: _tensor_digest(tensors, text)})
    with open(path, "wb") as f:
        f.write(data)


def fifo(path: os.PathLike | str) -> str:
    """A FIFO (named pipe) at ``path``: reading it blocks until a writer comes, forever here."""
    os.mkfifo(path)
    return str(path)
