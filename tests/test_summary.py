"""bnnkit.summary: per-layer bits, parameters, packed memory, MACs and totals."""

import pytest
import torch
from torch import nn

from bnnkit import models
from bnnkit.nn import BinaryConv2d, BinaryLinear
from bnnkit.summary import summarize


def test_small_model_rows_and_totals():
    model = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1, bias=False), nn.ReLU(), nn.BatchNorm2d(4),
                          BinaryConv2d(4, 8, 3, padding=1, bias=False), nn.Flatten(),
                          BinaryLinear(8 * 16, 6, input_estimator=None), nn.Linear(6, 3))
    s = summarize(model, (1, 4, 4))
    assert [r.name for r in s.rows] == ["0", "2", "3", "5", "6"]
    conv, bn, bconv, blin, fc = s.rows
    assert (conv.input_bits, conv.weight_bits, conv.params, conv.fp_macs) == (32, 32, 36, 16 * 4 * 9)
    assert bn.input_bits is None and bn.params == 8
    assert (bconv.input_bits, bconv.weight_bits, bconv.binary_params) == (1, 1, 288)
    assert bconv.binary_macs == 16 * 8 * 4 * 9 and bconv.fp_macs == 0
    assert bconv.memory_bytes == 288 / 8
    assert (blin.input_bits, blin.weight_bits) == (32, 1)
    assert blin.fp_macs == 128 * 6 and blin.memory_bytes == 768 / 8 + 4 * 6  # 1-bit weights, fp32 bias
    assert s.params == 36 + 8 + 288 + 774 + 21
    assert s.fp32_bytes == 4 * s.params
    assert s.compression == pytest.approx(s.fp32_bytes / s.packed_bytes)
    text = s.to_text()
    assert "BinaryConv2d" in text and "smaller" in text


def test_resnet20_summary_counts_binary_convs():
    s = summarize(models.create("resnet20"), (3, 32, 32))
    binary = sum(m.weight.numel() for m in models.create("resnet20").modules() if isinstance(m, BinaryConv2d))
    assert s.binary_params == binary
    assert s.params == sum(p.numel() for p in models.create("resnet20").parameters())
    assert s.compression > 15
    assert s.to_json()["totals"]["binary_params"] == binary


def test_summary_restores_training_mode():
    model = models.create("digits_cnn").train()
    summarize(model, (1, 8, 8))
    assert model.training
    with torch.no_grad():
        assert model(torch.zeros(2, 1, 8, 8)).shape == (2, 10)


def test_wrong_input_shape_is_a_clear_error(capsys):
    from bnnkit.cli import main

    assert main(["summary", "--model", "digits_mlp", "--input-shape", "3", "32", "32"]) == 2
    assert "does not take inputs of shape (3, 32, 32)" in capsys.readouterr().err
