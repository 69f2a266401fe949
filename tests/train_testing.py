"""Shared by the training tests: interrupting a run in a chosen epoch."""

from bnnkit.train import loop as train_loop


def interrupt_epoch(monkeypatch, n: int) -> None:
    """Make the ``n``-th call (1-based) of the training loop's epoch raise ``KeyboardInterrupt``,
    as Ctrl-C would, until ``monkeypatch.undo()``; earlier calls train for real."""
    real = train_loop.train_one_epoch
    calls = {"n": 0}

    def interrupted(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == n:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(train_loop, "train_one_epoch", interrupted)
