"""Compression: a run's model as a faster run (ONNX Runtime, fp32 or int8: `compress_run`) and a
large teacher's knowledge in a small student (distillation). Each result is a normal run directory.

onnx, onnxruntime and onnxscript are imported inside these modules only (`pip install 'tunery[onnx]'`).
"""

from tunery.compress.distill import distill_config, distill_run
from tunery.compress.run import CompressOptions, compress_run

__all__ = ["CompressOptions", "compress_run", "distill_config", "distill_run"]
