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


def load(model, x, threads: int, openvino_default: bool = False) -> Engines:
    """ONNX Runtime and OpenVINO sessions of `model` (plain PyTorch, eval, float32) for inputs
    shaped like `x`: ONNX Runtime with `threads` intra-op threads, OpenVINO with `threads`
    inference threads and the f32 precision hint ("openvino"); with `openvino_default` also
    OpenVINO at its default precision ("openvino_default": bf16 on CPUs with AMX or
    AVX512-BF16, what an OpenVINO user gets there), the row bfloat16 runs compare with."""
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
    core = ov.Core()
    hints = {"openvino": {"INFERENCE_PRECISION_HINT": "f32"}}
    if openvino_default:
        hints["openvino_default"] = {}
    for row, hint in hints.items():
        compiled = core.compile_model(path, "CPU", {"INFERENCE_NUM_THREADS": threads, **hint})
        request, output = compiled.create_infer_request(), compiled.output(0)
        precision = compiled.get_property("INFERENCE_PRECISION_HINT")
        engines[row] = (lambda inp, request=request, output=output: request.infer({0: inp})[output],
                         f"{ov.get_version()} ({precision})")
    return engines


def rel_err(out, reference: torch.Tensor) -> float:
    out = torch.as_tensor(out).double()
    reference = reference.double()
    return float((out - reference).norm() / reference.norm())
