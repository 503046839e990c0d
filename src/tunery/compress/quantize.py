"""int8 ONNX graphs with ONNX Runtime's quantization tool: dynamic (weights int8 ahead of time,
activations quantised per batch at run time) and static (activations' ranges calibrated on
training rows, QDQ format).

Settings follow ONNX Runtime's guidance for x86 CPUs: signed int8 weights quantised per output
channel; unsigned int8 activations (the U8S8 kernels). On CPUs without VNNI (AVX2 only) the U8S8
multiply (VPMADDUBSW) can saturate, so weights use 7 bits there (`reduce_range`); with VNNI
(avx512_vnni, avx_vnni) the full 8 bits. Only MatMul nodes are quantised: they hold nearly all
weights and time, while quantising LayerNorm, Softmax or Gelu inputs costs accuracy for little speed.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

import numpy as np

QUANTISED_OPS = ["MatMul"]


def cpu_has_vnni() -> bool:
    """True on an x86 CPU with VNNI (8-bit dot products without saturation)."""
    try:
        flags = set(Path("/proc/cpuinfo").read_text().split())
    except OSError:
        return False
    return bool(flags & {"avx512_vnni", "avx_vnni", "amx_int8"})


def settings(*, static: bool, reduce_range: bool | None = None) -> dict:
    """The quantisation settings used, as recorded in the run (JSON-ready)."""
    reduce = (not cpu_has_vnni()) if reduce_range is None else reduce_range
    return {"mode": "static" if static else "dynamic", "format": "QDQ" if static else "QOperator",
            "weights": "int8, symmetric, per channel", "activations": "uint8" + (", calibrated (min-max)" if static
                                                                               else ", per batch at run time"),
            "reduce_range": reduce, "ops": list(QUANTISED_OPS)}


def quantize_dynamic_int8(src: Path, dst: Path, *, reduce_range: bool, exclude: Iterable[str] = ()) -> None:
    """Dynamic int8 of the fp32 graph `src`, written to `dst`; nodes named in `exclude` stay fp32."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize_dynamic(os.fspath(src), os.fspath(dst), weight_type=QuantType.QInt8, per_channel=True,
                     reduce_range=reduce_range, op_types_to_quantize=list(QUANTISED_OPS),
                     nodes_to_exclude=list(exclude), extra_options={"MatMulConstBOnly": True})


def quantize_static_int8(src: Path, dst: Path, batches: list[dict[str, np.ndarray]], *, reduce_range: bool,
                         exclude: Iterable[str] = ()) -> None:
    """Static int8 (QDQ) of the fp32 graph `src`, its activation ranges calibrated (min-max) on
    `batches` (the graph's inputs as int64 arrays), written to `dst`."""
    from onnxruntime.quantization import (CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType,
                                          quantize_static)

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.rows = iter(batches)

        def get_next(self):
            return next(self.rows, None)

    quantize_static(os.fspath(src), os.fspath(dst), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                    reduce_range=reduce_range, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                    op_types_to_quantize=list(QUANTISED_OPS), nodes_to_exclude=list(exclude),
                    calibrate_method=CalibrationMethod.MinMax,
                    extra_options={"MatMulConstBOnly": True, "WeightSymmetric": True, "ActivationSymmetric": False})


def matmul_nodes(path: Path) -> list[str]:
    """Names of the MatMul nodes of the graph at `path`, in graph order (what may be excluded)."""
    import onnx

    graph = onnx.load(os.fspath(path), load_external_data=False).graph
    return [n.name for n in graph.node if n.op_type in QUANTISED_OPS]
