"""Weights on the 7-bit grid: onnxruntime quantises them without rounding, and its fast int8
kernels compute them exactly (no 16-bit saturation on x86 CPUs without VNNI)."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

from model.training.export import export_onnx
from model.training.qat import REDUCED_LEVELS, bake, on_grid, train_on_grid


def test_grid_is_per_channel_symmetric_and_commutes_with_channel_scaling() -> None:
    torch.manual_seed(0)
    w = torch.randn(8, 4, 3, 3)
    q = on_grid(w)
    scale = w.abs().amax(dim=(1, 2, 3), keepdim=True) / REDUCED_LEVELS
    steps = q / scale
    assert torch.allclose(steps, steps.round(), atol=1e-4) and steps.abs().max() <= REDUCED_LEVELS
    # each channel's largest weight stays where it was: nothing is clipped
    assert torch.allclose(q.abs().amax(dim=(1, 2, 3)), w.abs().amax(dim=(1, 2, 3)))
    # folding a batch norm multiplies each output channel by a factor, of either sign
    c = torch.tensor([0.5, -2.0, 3.0, -0.1, 1.0, 7.0, -1.5, 0.01]).view(8, 1, 1, 1)
    assert torch.allclose(on_grid(c * w), c * q, rtol=1e-5, atol=1e-7)


def test_training_on_the_grid_passes_gradients_and_bakes_to_plain_weights() -> None:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU6(), nn.Conv2d(4, 4, 3, groups=4), nn.Conv2d(4, 6, 1))
    convs = [m for m in net if isinstance(m, nn.Conv2d)]
    start = [m.weight.detach().clone() for m in convs]
    assert train_on_grid(net) == 2  # the depthwise one keeps 8 bits
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    for _ in range(3):
        loss = net(torch.randn(2, 3, 8, 8)).square().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    bake(net)
    assert all("parametrizations" not in k for k in net.state_dict())
    for m, w0 in zip(convs, start, strict=True):
        assert not torch.allclose(m.weight, w0)  # trained (through the straight-through estimator)
        on = torch.allclose(on_grid(m.weight), m.weight, rtol=1e-5, atol=1e-7)
        assert on == (m.groups == 1)


class _Tiny(nn.Module):
    """Conv + BN + ReLU6, depthwise, pointwise, pooled: the shapes of EfficientNet-Lite."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(3, 32, 3, stride=2, bias=False), nn.BatchNorm2d(32), nn.ReLU6(),
            nn.Conv2d(32, 32, 3, groups=32, bias=False), nn.BatchNorm2d(32), nn.ReLU6(),
            nn.Conv2d(32, 64, 1, bias=False), nn.BatchNorm2d(64), nn.ReLU6(),
        )

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        emb = self.body(x).mean(dim=(2, 3))
        return emb[:, :5], emb


def _tiny_onnx(path: Path) -> None:
    torch.manual_seed(0)
    net = _Tiny()
    for m in net.modules():
        if isinstance(m, nn.BatchNorm2d):  # batch norms that really rescale channels, some negative
            assert m.running_mean is not None and m.running_var is not None
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(-2.0, 2.0)
        if isinstance(m, nn.Conv2d):  # large weights, so 8-bit pairs of products would saturate
            m.weight.data *= 8.0
    train_on_grid(net)
    bake(net)
    export_onnx(net, 32, path)  # as the shipped model is written


def test_seven_bit_int8_is_rounding_free_and_exact_on_the_fast_kernels(
        tmp_path: Path, ort_session: Callable[[Path, bool], Any]) -> None:
    import onnx
    from onnx import numpy_helper

    from model.training.export import depthwise_weights, quantize_int8

    fp32, int8 = tmp_path / "tiny.onnx", tmp_path / "tiny.int8.onnx"
    _tiny_onnx(fp32)
    rng = np.random.default_rng(0)
    calib = rng.uniform(-1, 1, (8, 3, 32, 32)).astype(np.float32)
    quantize_int8(fp32, int8, calib, weight_bits=7)

    # onnxruntime's per-channel 7-bit weights are exactly the trained (batch-norm folded) ones;
    # the depthwise ones keep 8 bits
    fp32_graph = onnx.load(str(fp32)).graph
    folded = {n.name: numpy_helper.to_array(n) for n in fp32_graph.initializer}
    depthwise = set(depthwise_weights(fp32_graph))
    q = onnx.load(str(int8))
    inits = {n.name: numpy_helper.to_array(n) for n in q.graph.initializer}
    bits = {}
    for node in q.graph.node:
        w = inits.get(node.input[0])
        if node.op_type != "DequantizeLinear" or w is None or w.dtype != np.int8 or w.ndim != 4:
            continue
        name = node.input[0].removesuffix("_quantized")
        bits[name] = int(np.abs(w.astype(np.int32)).max())
        if name not in depthwise:
            scale = inits[node.input[1]].reshape(-1, 1, 1, 1)
            np.testing.assert_allclose(w * scale, folded[name], rtol=1e-5, atol=1e-7)
    assert len(depthwise) == 1 and len(bits) == 3
    assert all(b == (127 if name in depthwise else REDUCED_LEVELS) for name, b in bits.items())

    # the fast kernels give what the exact ones give, on every CPU
    x = rng.uniform(-1, 1, (4, 3, 32, 32)).astype(np.float32)
    fast = ort_session(int8, False).run(None, {"image": x})
    exact = ort_session(int8, True).run(None, {"image": x})
    for a, b in zip(fast, exact, strict=True):
        np.testing.assert_array_equal(a, b)

    # The premise, on the CPUs where it holds: the same network with 8-bit weights saturates them.
    from model.recognizer import cpu_flags, int8_kernels_may_saturate

    if int8_kernels_may_saturate() and "avx2" in (cpu_flags() or ()):
        int8_8 = tmp_path / "tiny.int8-8bit.onnx"
        quantize_int8(fp32, int8_8, calib, weight_bits=8)
        fast8 = ort_session(int8_8, False).run(None, {"image": x})[1]
        exact8 = ort_session(int8_8, True).run(None, {"image": x})[1]
        assert np.abs(fast8 - exact8).max() > 0.05


def test_a_seven_bit_model_runs_on_the_fast_kernels(shipped_model: Path, tmp_path: Path) -> None:
    """The int8 file's metadata says its weights are 7-bit; then the stall uses the fast kernels
    on every CPU.  An 8-bit file gets the exact ones wherever the fast ones saturate (it loses
    8 points on them on CPUs without VNNI)."""
    from model.recognizer import Recognizer, int8_kernels_may_saturate

    for f in shipped_model.parent.glob(shipped_model.stem + ".*"):
        shutil.copy(f, tmp_path / f.name)
    model = tmp_path / shipped_model.name
    entry = "session.x64quantprecision"
    eight = Recognizer.load(model)
    assert eight.meta.exact_int8 and eight.runner.exact_kernels is int8_kernels_may_saturate()
    want = "1" if int8_kernels_may_saturate() else "0"
    assert eight.runner.session.get_session_options().get_session_config_entry(entry) == want
    meta = json.loads(model.with_suffix(".json").read_text())
    model.with_suffix(".json").write_text(json.dumps({**meta, "int8": {"weight_bits": 7}}))
    seven = Recognizer.load(model)
    assert not seven.meta.exact_int8 and not seven.runner.exact_kernels
    assert seven.runner.session.get_session_options().get_session_config_entry(entry) == "0"


@pytest.mark.parametrize("argv, message", [
    (["--mode", "linear", "--weight-bits", "7"], "--weight-bits 7 needs --mode distill"),
    (["--mode", "distill", "--students", "2", "--weight-bits", "7"], "one student"),
])
def test_seven_bit_training_needs_one_distilled_student(argv: list[str], message: str,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    from edge.cli import main

    rc = main(["model", "train", *argv])
    err = capsys.readouterr().err
    assert rc == 1 and message in err and "Traceback" not in err
