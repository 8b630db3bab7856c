"""The CPU inference engines we compare against: a plain-PyTorch eval model exported to ONNX
(the dynamo exporter) and run in ONNX Runtime and OpenVINO with a given number of threads,
float32. Optional packages: an engine that is not installed is left out with a message."""
from __future__ import annotations

import os
import tempfile
from typing import Callable, Dict, Tuple

import torch

# name -> (run(input ndarray) -> output ndarray, version)
Engines = Dict[str, Tuple[Callable, str]]


def export_onnx(model, x, path):
    """The eval model as a standard ONNX file."""
    torch.onnx.export(model.eval(), (x,), path, dynamo=True, verbose=False)
    return path


def load(model, x, threads: int) -> Engines:
    """ONNX Runtime and OpenVINO sessions of `model` (plain PyTorch, eval) for inputs shaped
    like `x`: ONNX Runtime with `threads` intra-op threads, OpenVINO with `threads`
    inference threads and the f32 precision hint (its default on CPUs with bf16 units is
    to compute in bf16)."""
    engines: Engines = {}
    try:
        import onnxruntime as ort
        import onnxscript  # noqa: F401  (the dynamo exporter's dependency)
    except ImportError as err:
        print(f"no ONNX export ({err.name} is not installed): no onnxruntime/openvino rows")
        return engines
    path = export_onnx(model, x, os.path.join(tempfile.mkdtemp(prefix="r2p1d-onnx-"), "model.onnx"))
    opts = ort.SessionOptions()
    opts.intra_op_num_threads, opts.inter_op_num_threads = threads, 1
    session = ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    engines["onnxruntime"] = (lambda inp: session.run(None, {name: inp})[0], ort.__version__)
    try:
        import openvino as ov
    except ImportError:
        print("openvino is not installed: no openvino row")
        return engines
    compiled = ov.Core().compile_model(path, "CPU", {"INFERENCE_NUM_THREADS": threads,
                                                     "INFERENCE_PRECISION_HINT": "f32"})
    request = compiled.create_infer_request()
    output = compiled.output(0)
    engines["openvino"] = (lambda inp: request.infer({0: inp})[output], ov.get_version())
    return engines


def rel_err(out, reference: torch.Tensor) -> float:
    out = torch.as_tensor(out).double()
    reference = reference.double()
    return float((out - reference).norm() / reference.norm())
