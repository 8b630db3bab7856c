"""Trained weights into a fused network: a checkpoint of ``r2p1d train``, or a torchvision
``r2plus1d_18``-style state_dict (e.g. the Kinetics-400 file a user downloaded) with its
class names; and the weights of either as the start of a new run (fine-tuning).

A checkpoint written by ``r2p1d train`` (``<out>/checkpoint.pt``, read with
``weights_only=True``) is a dict with the keys (docs/training.md lists them too):

* ``model``: the network's state_dict; ``classes``: the class names, in label order;
* ``config``: the run's settings (``TrainConfig`` as a dict: ``arch``, ``clip_len``,
  ``frame_stride``, ``short_side``, ``crop_size``, ``eval_clips``, ``amp``, ...);
* ``epoch``, ``step``, ``batches_done``, ``history`` (one row of metrics per epoch);
* ``optimizer``, ``scheduler``, ``scaler``, ``rng``: what an exact resume needs.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Dict, List, Mapping, Optional, Sequence

import torch
from torch import Tensor, nn

from .._io import load_checkpoint
from .builders import ARCHS, build_model
from .presets import preset
from .video_resnet import torchvision_keys_to_fused

# The settings a torchvision state_dict is run with, as a checkpoint's config would give
# them: the preprocessing its Kinetics-400 weights were trained with (r2p1d_ext/models/presets.py).
TORCHVISION_PREPROCESSING = {**preset("kinetics-torchvision"), "preset": "kinetics-torchvision", "amp": None,
                             "channels_last": None}
CLASSIFIER = ("fc.weight", "fc.bias")


@dataclasses.dataclass
class LoadedModel:
    """A network with trained weights (in eval mode), its class names in label order, and
    the settings its inputs were prepared with (``arch``, ``clip_len``, ``frame_stride``,
    ``short_side``, ``crop_size``, ``eval_clips``, ...)."""
    model: nn.Module
    classes: List[str]
    config: Dict[str, Any]
    epoch: Optional[int] = None  # the epochs a checkpoint had trained (None: a plain state_dict)


def read_labels(path: str) -> List[str]:
    """Class names, one per line (blank lines ignored)."""
    with open(path, encoding="utf-8") as f:
        labels = [line.strip() for line in f if line.strip()]
    if not labels:
        raise ValueError(f"labels file {path} holds no class names (expected one per line)")
    return labels


def _read(path: str) -> Dict[str, Any]:
    state = load_checkpoint(path)  # a missing file: an error naming it (or the previous checkpoint)
    if not isinstance(state, Mapping):
        raise ValueError(f"{path} holds a {type(state).__name__}, expected a checkpoint or a state_dict")
    return dict(state)


def _is_checkpoint(state: Mapping[str, Any]) -> bool:
    return isinstance(state.get("model"), Mapping) and "config" in state and "classes" in state


def _as_fused_state_dict(state: Mapping[str, Any], path: str) -> Dict[str, Tensor]:
    """A state_dict in this package's module names, from ours or torchvision's (whose
    Conv2Plus1D parts are renamed), or from a {"state_dict": ...} / {"model": ...} wrapper."""
    for wrapper in ("state_dict", "model"):
        if isinstance(state.get(wrapper), Mapping):
            state = state[wrapper]
    tensors = {k: v for k, v in state.items() if isinstance(v, Tensor)}
    if not tensors:
        raise ValueError(f"{path} holds no tensors: expected a checkpoint of r2p1d train or a state_dict")
    return torchvision_keys_to_fused(tensors)


def _num_classes(state: Mapping[str, Tensor], path: str) -> int:
    if "fc.weight" not in state:
        raise ValueError(f"{path} has no classifier (fc.weight): expected an r2plus1d_* state_dict, "
                         f"got keys such as {sorted(state)[:5]}")
    return int(state["fc.weight"].shape[0])


def _load_strict(model: nn.Module, state: Mapping[str, Tensor], path: str, arch: str) -> None:
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    shapes = sorted(k for k in set(own) & set(state) if own[k].shape != state[k].shape)
    if missing or unexpected or shapes:
        raise ValueError(f"{path} does not fit {arch}: {_describe(missing, unexpected, shapes, own, state)}")
    model.load_state_dict(state)


def _describe(missing, unexpected, shapes, own, state, limit: int = 4) -> str:
    parts = []
    if missing:
        parts.append(f"{len(missing)} weights missing ({', '.join(missing[:limit])}{', ...' if len(missing) > limit else ''})")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected ({', '.join(unexpected[:limit])}"
                     f"{', ...' if len(unexpected) > limit else ''})")
    if shapes:
        parts.append("shapes differ: " + ", ".join(f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}"
                                                  for k in shapes[:limit]))
    return "; ".join(parts)


def load_model(path: str, arch: Optional[str] = None, labels: Optional[Sequence[str]] = None,
               map_location="cpu") -> LoadedModel:
    """The fused network of ``path``, in eval mode, on ``map_location``.

    ``path`` is a checkpoint of ``r2p1d train`` (its arch, classes and preprocessing come
    with it; ``arch``/``labels``, when given, must agree), or a state_dict of torchvision's
    ``r2plus1d_18`` layout (ours or torchvision's names), which needs ``arch`` (a key of
    ``ARCHS``) and ``labels`` (the class names; their count must equal the classifier's
    outputs). A mismatch is a ValueError naming both sides."""
    state = _read(path)
    if _is_checkpoint(state):
        config = dict(state["config"])
        classes = list(state["classes"])
        if arch is not None and arch != config.get("arch"):
            raise ValueError(f"{path} is a {config.get('arch')} checkpoint, not {arch} (--arch): leave --arch out "
                             f"or pass the checkpoint of an {arch}")
        if labels is not None and list(labels) != classes:
            raise ValueError(f"the labels given ({len(labels)}) differ from the {len(classes)} classes {path} was "
                             f"trained on ({', '.join(classes[:5])}{', ...' if len(classes) > 5 else ''}): "
                             "leave the labels out, a checkpoint carries its own")
        weights = dict(state["model"])
        epoch = state.get("epoch")
    else:
        epoch = None
        if arch is None:
            raise ValueError(f"{path} is a plain state_dict: say which network it is (--arch, one of {sorted(ARCHS)})")
        weights = _as_fused_state_dict(state, path)
        n = _num_classes(weights, path)
        if labels is None:
            raise ValueError(f"{path} is a plain state_dict with {n} classes: give their names (--labels FILE, "
                             "one per line)")
        if len(labels) != n:
            raise ValueError(f"the labels file has {len(labels)} names, the classifier of {path} has {n} outputs")
        classes = list(labels)
        config = {"arch": arch, **TORCHVISION_PREPROCESSING}
    model = build_model(config["arch"], len(classes))
    _load_strict(model, weights, path, config["arch"])
    return LoadedModel(model.to(map_location).eval(), classes, config, epoch)


def load_initial_weights(model: nn.Module, path: str, hint_preset: bool = False) -> str:
    """Fine-tuning: every weight of ``path`` (a checkpoint of ``r2p1d train`` or a
    torchvision-layout state_dict) loaded into ``model``, whose classifier stays as it was
    initialised when the class counts differ. Anything else that does not fit is a
    ValueError naming the keys. Returns a line saying what was loaded (with `hint_preset`,
    for a torchvision state_dict, which preprocessing its Kinetics weights expect)."""
    state = _read(path)
    plain = not _is_checkpoint(state)
    weights = _as_fused_state_dict(state, path) if plain else dict(state["model"])
    own = model.state_dict()
    head = [k for k in CLASSIFIER if k in own]
    replaced = any(k in weights and weights[k].shape != own[k].shape for k in head)
    body = {k: v for k, v in weights.items() if not (replaced and k in head)}
    missing = sorted(k for k in set(own) - set(body) if not (replaced and k in head))
    unexpected = sorted(set(body) - set(own))
    shapes = sorted(k for k in set(own) & set(body) if own[k].shape != body[k].shape)
    if missing or unexpected or shapes:
        raise ValueError(f"--init {path} does not fit this network: {_describe(missing, unexpected, shapes, own, body)}"
                         " (only the classifier, fc, may differ)")
    own.update({k: v.to(own[k].dtype) for k, v in body.items()})
    model.load_state_dict(own)
    hint = ("; torchvision's Kinetics-400 weights were trained with the preprocessing of --preset "
            "kinetics-torchvision (15 fps, 128x171 frames)" if plain and hint_preset else "")
    if replaced:
        old, new = weights["fc.weight"].shape[0], own["fc.weight"].shape[0]
        return (f"initialised from {path}: {len(body)} tensors; the classifier is new ({old} classes there, "
                f"{new} here){hint}")
    return f"initialised from {path}: all {len(body)} tensors, the classifier included{hint}"
