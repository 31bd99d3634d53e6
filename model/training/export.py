"""ONNX export, int8 quantisation and the model's metadata file (torch only for export).

A shipped model is two files side by side:

* ``NAME.onnx``: input ``image`` (N, 3, S, S) float32 RGB ``(x - 127) / 128``;
  outputs ``logits`` (N, C) = scale * cosine to each label's prototype, and
  ``embedding`` (N, D), L2-normalised;
* ``NAME.json``: labels, input spec, version, temperature, unknown threshold,
  the SHA-256 of the training list and of the ONNX file, and measured figures.
"""

from __future__ import annotations

import hashlib
import json
import logging
import warnings
from pathlib import Path
from typing import Any

import numpy as np

logger = logging.getLogger(__name__)

FORMAT_VERSION = 1


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def export_onnx(net: Any, size: int, path: Path) -> None:
    """Write ``net`` (a RecognizerNet) to ``path`` with a dynamic batch axis."""
    import torch

    net = net.eval()
    dummy = torch.zeros(1, 3, size, size)
    path.parent.mkdir(parents=True, exist_ok=True)
    # The TorchScript exporter is deprecated in favour of torch.export, which does
    # not yet handle this trunk's static-padding modules: silence its notices.
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            net,
            (dummy,),
            str(path),
            input_names=["image"],
            output_names=["logits", "embedding"],
            dynamic_axes={"image": {0: "batch"}, "logits": {0: "batch"}, "embedding": {0: "batch"}},
            opset_version=17,
            dynamo=False,
        )
    import onnx

    m = onnx.load(str(path))
    onnx.checker.check_model(m)
    logger.info("exported %s (%.1f MB)", path, path.stat().st_size / 1e6)


def quantize_int8(fp32: Path, int8: Path, calibration: np.ndarray, weight_bits: int = 8) -> None:
    """Static int8 (QDQ, per-channel weights) calibrated on real preprocessed photos.

    ``weight_bits=7``: onnxruntime's reduced range for every convolution but the depthwise
    ones (whose kernel cannot saturate), for a network trained on that grid (``model.training.qat``):
    exact on the fast int8 kernels of CPUs without VNNI.
    """
    if weight_bits not in (7, 8):
        raise ValueError(f"weight_bits must be 7 or 8, got {weight_bits}")
    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.it = iter(calibration[i : i + 1] for i in range(len(calibration)))

        def get_next(self) -> dict[str, np.ndarray] | None:
            x = next(self.it, None)
            return None if x is None else {"image": x}

    pre = int8.with_suffix(".pre.onnx")
    quant_pre_process(str(fp32), str(pre))
    import onnx

    graph = onnx.load(str(pre)).graph
    # per-channel overrides must name the axis; depthwise weights keep the full 8 bits
    overrides = ({"TensorQuantOverrides": {w: [{"axis": 0, "reduce_range": False}]
                                           for w in depthwise_weights(graph)}}
                 if weight_bits == 7 else {})
    try:
        quantize_static(
            str(pre),
            str(int8),
            Reader(),
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            reduce_range=weight_bits == 7,
            extra_options=overrides,
            # The cosine head and the normalisation are tiny and need the precision.
            nodes_to_exclude=_tail_nodes(graph),
        )
    finally:
        pre.unlink(missing_ok=True)
    logger.info("quantised %s (%.1f MB)", int8, int8.stat().st_size / 1e6)


def depthwise_weights(graph: Any) -> list[str]:
    """Names of the weights of the graph's depthwise (grouped) convolutions."""
    return [n.input[1] for n in graph.node if n.op_type == "Conv"
            and any(a.name == "group" and a.i > 1 for a in n.attribute)]


def _tail_nodes(graph: Any) -> list[str]:
    """Nodes after the global pooling (normalisation and cosine head): kept in float."""
    names = [n.name for n in graph.node]
    kinds = [n.op_type for n in graph.node]
    start = max((i for i, k in enumerate(kinds) if k in ("ReduceMean", "GlobalAveragePool")),
                default=len(kinds))
    return names[start:]


def write_metadata(path: Path, meta: dict[str, Any], onnx_path: Path) -> None:
    meta = dict(meta)
    meta["format_version"] = FORMAT_VERSION
    meta["onnx_file"] = onnx_path.name
    meta["onnx_sha256"] = sha256_file(onnx_path)
    path.write_text(json.dumps(meta, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
