"""The o schedule and the learning-rate schedule."""

import math

import pytest
from torch import nn

from bnnkit.nn import BinaryConv2d, BinaryLinear
from bnnkit.schedule import OSchedule, o_at
from bnnkit.train.config import lr_at


def test_o_schedule_values_of_the_paper():
    # 1000 epochs, o_end = 3: o(0) = 1, o(250) = 1.152, o(500) = 1.586, o(750) = 2.235, o(999) = 2.997
    got = [o_at(e, 1000) for e in (0, 250, 500, 750, 999)]
    assert got == pytest.approx([1.0, 1.152, 1.586, 2.235, 2.997], abs=5e-4)
    assert o_at(1000, 1000) == pytest.approx(3.0)
    assert o_at(10, 20, o_end=5.0) == pytest.approx(1 + (1 - math.cos(math.pi / 4)) * 4)


def test_o_schedule_is_cosine_not_linear():
    mid = o_at(50, 100, o_end=3.0)
    assert mid < 2.0  # a linear schedule would give 2 at the middle


def test_oschedule_sets_every_binary_layer():
    model = nn.Sequential(nn.Conv2d(1, 2, 1), BinaryConv2d(2, 2, 1), nn.Flatten(), BinaryLinear(2, 2))
    sched = OSchedule(model, epochs=10, o_end=4.0)
    assert sched.step(0) == 1.0
    o5 = sched.step(5)
    assert model[1].o == o5 == model[3].o
    assert not hasattr(model[0], "o")
    assert sched.value(9) == pytest.approx(1 + (1 - math.cos(0.9 * math.pi / 2)) * 3)


def test_oschedule_rejects_bad_values():
    with pytest.raises(ValueError, match="o_end"):
        OSchedule(nn.Linear(1, 1), epochs=5, o_end=0.5)
    with pytest.raises(ValueError, match="epochs"):
        OSchedule(nn.Linear(1, 1), epochs=0)
    with pytest.raises(ValueError, match="epoch must be"):
        o_at(11, 10)


def test_lr_warmup_then_cosine():
    assert [lr_at(e, 20, 0.1, warmup_epochs=5) for e in range(5)] == pytest.approx([0.02, 0.04, 0.06, 0.08, 0.1])
    assert lr_at(5, 20, 0.1, warmup_epochs=5) == pytest.approx(0.1)
    assert lr_at(0, 10, 0.1) == pytest.approx(0.1)
    assert lr_at(5, 10, 0.1) == pytest.approx(0.05)
    assert 0 < lr_at(9, 10, 0.1) < 0.003
