"""A trained model exported for other runtimes: ONNX in standard operators (the fused
blocks export as the plain convolutions, BatchNorm folded in eval) or a ``torch.export``
program (``.pt2``: the fused ops stay, so loading it needs ``import r2p1d_ext``). The class
names travel with it: in the ONNX file's metadata (``labels``, one per line) and in a sidecar
``<out>.labels.txt`` for both formats. ``check`` runs the exported file once (ONNX Runtime
when installed; the loaded program for ``.pt2``) and compares it with PyTorch."""
from __future__ import annotations

import importlib.util
import os
from typing import Any, Dict, Optional, Union

import torch

from .._extras import require
from .._io import write_atomic
from ..models.loading import LoadedModel


def export_model(loaded: LoadedModel, out: str, fmt: str = "onnx", batch: Union[str, int] = "dynamic",
                 clip_len: Optional[int] = None, check: bool = False, seed: int = 0) -> Dict[str, Any]:
    """Writes `loaded`'s model (on the CPU, in eval) to `out` and the labels beside it.
    `batch`: "dynamic" (1 to 256) or a fixed size; `clip_len`: frames per clip (default the
    model's own). Returns what was written and, with `check`, the max abs difference."""
    if fmt not in ("onnx", "pt2"):
        raise ValueError(f"expected format onnx or pt2, got {fmt!r}")
    if batch != "dynamic" and not (isinstance(batch, int) and batch >= 1):
        raise ValueError(f"expected batch 'dynamic' or a positive integer, got {batch!r}")
    cfg = loaded.config
    frames = clip_len or cfg["clip_len"]
    if frames < 1:
        raise ValueError(f"expected clip_len >= 1, got {frames}")
    model = loaded.model.cpu().eval()
    n = 2 if batch == "dynamic" else batch
    x = torch.randn(n, 3, frames, cfg["crop_size"], cfg["crop_size"], generator=torch.Generator().manual_seed(seed))
    dynamic = {"x": {0: torch.export.Dim("batch", min=1, max=256)}} if batch == "dynamic" else None
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    labels = "\n".join(loaded.classes) + "\n"
    if fmt == "onnx":
        require("ONNX export (torch.onnx.export with dynamo=True)", "deploy", ("onnx", "onnxscript"))
        program = torch.onnx.export(model, (x,), dynamo=True, verbose=False, dynamic_shapes=dynamic)
        proto = program.model_proto
        entry = proto.metadata_props.add()
        entry.key, entry.value = "labels", labels
        write_atomic(out, lambda f: f.write(proto.SerializeToString()), suffix=".onnx")
    else:
        with torch.no_grad():
            program = torch.export.export(model, (x,), dynamic_shapes=dynamic)
        write_atomic(out, lambda f: torch.export.save(program, f, extra_files={"labels.txt": labels}), suffix=".pt2")
    write_atomic(out + ".labels.txt", lambda f: f.write(labels), binary=False, suffix=".txt")
    info: Dict[str, Any] = {"path": out, "format": fmt, "input": [("batch" if batch == "dynamic" else n), 3, frames,
                                                                  cfg["crop_size"], cfg["crop_size"]],
                            "labels": out + ".labels.txt", "classes": len(loaded.classes)}
    if check:
        info.update(check_export(model, out, fmt, x))
    return info


def check_export(model: torch.nn.Module, path: str, fmt: str, x: torch.Tensor) -> Dict[str, Any]:
    """The exported file run once on `x` against `model` in PyTorch: the max abs error of
    the logits, and the runtime that ran it (None: ONNX Runtime is not installed)."""
    with torch.no_grad():
        want = model(x)
    if fmt == "onnx":
        if importlib.util.find_spec("onnxruntime") is None:
            return {"checked_with": None, "max_abs_error": None}
        import onnxruntime as ort
        session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
        got = torch.from_numpy(session.run(None, {session.get_inputs()[0].name: x.numpy()})[0])
        runtime = f"onnxruntime {ort.__version__}"
    else:
        with torch.no_grad():
            got = torch.export.load(path).module()(x)
        runtime = f"torch.export.load (torch {torch.__version__})"
    return {"checked_with": runtime, "max_abs_error": float((got - want).abs().max()),
            "max_abs_logit": float(want.abs().max())}


def read_onnx_labels(path: str):
    """The class names an exported ONNX file carries (its ``labels`` metadata)."""
    require("reading ONNX metadata", "deploy", ("onnx",))
    import onnx
    meta = {p.key: p.value for p in onnx.load(path, load_external_data=False).metadata_props}
    return meta["labels"].splitlines() if "labels" in meta else None
