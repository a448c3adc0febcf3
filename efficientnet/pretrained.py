"""Weights from other EfficientNet v1 implementations into our Keras model, and ours out as Keras files.

Sources, recognised by what the file holds (never by its name):

- "ours": a tf.train checkpoint written by train.py (`model/...` variables, EMA shadows `ema/shadows/<i>`).
- "keras_h5": Keras Applications' legacy HDF5 weights (the released efficientnetb0.h5 / _notop.h5).
- "keras_v3": a Keras 3 `.weights.h5` of keras.applications.EfficientNetB<k>.
- "tpu": a tensorflow/tpu (or AutoML) checkpoint, `efficientnet-b0/blocks_0/...`, EMA `.../ExponentialMovingAverage`.
- "timm_safetensors": timm's TF-ported `tf_efficientnet_b<k>` state dict in safetensors (PyTorch layouts).

Every reader turns its file into (our variable path, array) pairs; one generic step checks every shape
before anything is assigned, so a load that fails leaves the model as it was. docs/pretrained.md explains
each source's naming, layout, input normalisation and padding.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
from typing import Sequence

import h5py
import keras
import numpy as np
import tensorflow as tf
# keras.applications exports EfficientNetB0..B7 only; the builder they call takes any width and depth.
from keras.src.applications import efficientnet as keras_efficientnet

from efficientnet.params import (IMAGENET_MEAN, IMAGENET_STD, VARIANTS, classifier_initializer, decode_blocks,
                                 params_for, round_filters)

FORMATS = ("ours", "keras_h5", "keras_v3", "tpu", "timm_safetensors")
WEIGHTS = ("ema", "raw")

_HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"
_BN_VARS = ("gamma", "beta", "moving_mean", "moving_variance")
# Keras Applications' released files store ImageNet's standard deviations where a variance belongs
# (tensorflow/tensorflow#49930); `EfficientNetB<k>(weights="imagenet")` divides by sqrt() once more to undo it.
_KERAS_RELEASED_VARIANCE = (0.229, 0.224, 0.225)
# Pixels (0-255): how far a file's mean may be from the model's and still count as the same normalisation.
_MEAN_TOLERANCE = 1e-3


@dataclasses.dataclass(frozen=True)
class LoadReport:
    """What `load_into` did: which file and format, which weights, what was left out and why."""

    path: str
    format: str
    weights: str  # "ema", "raw", or "single" for formats with one set of weights
    assigned: int  # model variables set from the file
    skipped: tuple[str, ...]  # model variables left as they were (the classifier, when not loaded)
    head: str  # "loaded", or why the classifier was not
    source_mean: tuple[float, ...]  # input normalisation the source network expects, in 0-255 pixels
    source_std: tuple[float, ...]
    stem_rescaled: bool  # the stem kernel absorbed a different input scale (see docs/pretrained.md)
    notes: tuple[str, ...] = ()

    def summary(self) -> str:
        parts = [f"loaded {self.assigned} variables from {self.path} ({self.format}, {self.weights} weights)",
                 f"classifier {self.head}"]
        if self.stem_rescaled:
            parts.append("stem kernel rescaled to the source's input normalisation")
        return "; ".join(parts + list(self.notes))


class ClassifierMismatch(ValueError):
    """The file's classifier has another class count than the model's, or the file has none (a notop file)."""

    def __init__(self, message: str, path: str, file_classes: int | None, model_classes: int):
        super().__init__(message)
        self.path, self.file_classes, self.model_classes = path, file_classes, model_classes


@dataclasses.dataclass
class _Source:
    entries: list[tuple[str, np.ndarray, str]]  # (our variable path, value, the file's own name for it)
    mean: tuple[float, ...] | None  # None: same normalisation as the model
    std: tuple[float, ...] | None
    weights: str
    notes: list[str]
    blocks_hint: str = ""  # e.g. "efficientnet-b1" when the file names its variant
    format: str = ""


# ---------------------------------------------------------------------------------------------------------
# detection

def _checkpoint_prefix(path: str) -> str | None:
    """The tf.train checkpoint `path` names (a prefix, its .index file, or a directory with a
    'checkpoint' state file), or None when it names none."""
    if os.path.isdir(path):
        if os.path.exists(os.path.join(path, "checkpoint")):
            latest = tf.train.latest_checkpoint(path)
            if latest is None:
                raise ValueError(f"{path}: its 'checkpoint' file names no checkpoint that exists")
            return latest
        return None
    if path.endswith(".index") and os.path.isfile(path):
        return path[: -len(".index")]
    if os.path.isfile(path + ".index"):
        return path
    return None


def _one_line(error: BaseException) -> str:
    text = " ".join(str(error).split())
    return text[:300] + ("..." if len(text) > 300 else "")


def _checkpoint_keys(path: str, prefix: str) -> dict[str, list[int]]:
    try:
        return dict(tf.train.list_variables(prefix))
    except (tf.errors.OpError, ValueError) as e:
        raise ValueError(f"{path}: unreadable TensorFlow checkpoint (truncated or corrupt index): "
                         f"{_one_line(e)}") from None


def _is_safetensors(path: str) -> bool:
    """safetensors: an 8-byte little-endian header length, then that many bytes of JSON starting with '{'."""
    with open(path, "rb") as f:
        head = f.read(9)
    if len(head) < 9:
        return False
    size = int.from_bytes(head[:8], "little")
    return head[8:9] == b"{" and 0 < size < 100_000_000


def _timm_file(path: str) -> str:
    return os.path.join(path, "model.safetensors") if os.path.isdir(path) else path


def detect_format(path: str) -> str:
    """One of FORMATS, from the file's content. FileNotFoundError when nothing is at `path`; ValueError
    (one line naming the file) when it is unreadable or none of the known formats."""
    path = os.fspath(path)
    prefix = _checkpoint_prefix(path)
    if prefix is None and not os.path.exists(path):
        raise FileNotFoundError(f"{path}: no such file, directory or checkpoint prefix")
    if prefix is not None:
        keys = _checkpoint_keys(path, prefix)
        if any(k.startswith("model/") and k.endswith("/.ATTRIBUTES/VARIABLE_VALUE") for k in keys):
            return "ours"
        if any(_TPU_STEM.match(k) for k in keys):
            return "tpu"
        sample = ", ".join(sorted(keys)[:3])
        raise ValueError(f"{path}: a TensorFlow checkpoint but neither ours (model/...) nor the tensorflow/tpu "
                         f"EfficientNet layout (<name>/stem/conv2d/kernel); first variables: {sample}")
    if os.path.isdir(path):
        if os.path.isfile(_timm_file(path)):
            return detect_format(_timm_file(path))
        raise ValueError(f"{path}: a directory without a 'checkpoint' file or model.safetensors")
    with open(path, "rb") as f:
        signature = f.read(8)
    if signature == _HDF5_SIGNATURE:
        try:
            with h5py.File(path, "r") as f:
                if _h5_attr_list(f, "layer_names") or "model_weights" in f:
                    return "keras_h5"
                if "layers" in f:
                    return "keras_v3"
        except OSError as e:
            raise ValueError(f"{path}: unreadable HDF5 file (truncated or corrupt): {_one_line(e)}") from None
        raise ValueError(f"{path}: an HDF5 file but not Keras weights (no layer_names, model_weights or layers)")
    if _is_safetensors(path):
        keys = _safetensors_keys(path)
        if "conv_stem.weight" in keys:
            return "timm_safetensors"
        raise ValueError(f"{path}: a safetensors file without timm EfficientNet keys (conv_stem.weight); "
                         f"first keys: {', '.join(sorted(keys)[:3])}")
    raise ValueError(f"{path}: not a known weights format (expected a TensorFlow checkpoint, Keras HDF5 weights "
                     "or timm safetensors)")


def recorded_normalization(path: str) -> tuple[tuple[float, ...], tuple[float, ...]] | None:
    """The input normalisation (mean, std), in 0-255 pixels, that the network at `path` expects, when the
    file records it: a Keras Applications file's Normalization layer (read as `load_into` reads it), timm's
    config.json beside the safetensors, our run_spec.json beside the checkpoint. None when it does not
    (tensorflow/tpu checkpoints: ImageNet's, or AdvProp's 127.5, by the checkpoint's origin; timm without
    config.json). Reads only that, so a model can be built with it (ModelParams.input_mean/input_std) before
    the weights are loaded."""
    path = os.fspath(path)
    fmt = detect_format(path)
    if fmt in ("keras_h5", "keras_v3"):
        try:
            with h5py.File(path, "r") as f:
                values = _keras_normalization_values(f)
        except OSError as e:
            raise ValueError(f"{path}: unreadable HDF5 file (truncated or corrupt): {_one_line(e)}") from None
        if values is None:
            raise ValueError(f"{path}: Keras weights without the Normalization layer every "
                             "keras.applications EfficientNet has; not an EfficientNet file")
        return _keras_normalization(values[0], values[1], [])
    if fmt == "timm_safetensors":
        return _timm_config(_timm_file(path))
    if fmt == "ours":
        spec = _run_spec(_checkpoint_prefix(path))
        return _run_spec_normalization(spec) if spec else None
    return None


def _keras_normalization_values(f) -> list[np.ndarray] | None:
    """[mean, variance, count] of the Normalization layer in an open Keras weights file (either layout)."""
    if "layers" in f and not _h5_attr_list(f, "layer_names"):
        for child in f["layers"]:
            vars_group = f["layers"][child].get("vars")
            name = vars_group.attrs.get("name", child) if isinstance(vars_group, h5py.Group) else child
            name = name.decode("utf8") if isinstance(name, bytes) else str(name)
            if name.startswith("normalization") and isinstance(vars_group, h5py.Group) and len(vars_group):
                return [np.asarray(vars_group[k]) for k in sorted(vars_group, key=int)]
        return None
    group = f if _h5_attr_list(f, "layer_names") else f["model_weights"]
    for layer in _h5_attr_list(group, "layer_names"):
        weight_names = _h5_attr_list(group[layer], "weight_names")
        if layer.startswith("normalization") and weight_names:
            return [np.asarray(group[layer][w]) for w in weight_names]
    return None


# ---------------------------------------------------------------------------------------------------------
# Keras Applications files

def _h5_attr_list(group, name: str) -> list[str]:
    """A string-list attribute as Keras writes it: whole, or split into name0, name1, ... when it would pass
    HDF5's 64 kB attribute limit."""
    if name in group.attrs:
        raw = list(group.attrs[name])
    else:
        raw, chunk = [], 0
        while f"{name}{chunk}" in group.attrs:
            raw.extend(group.attrs[f"{name}{chunk}"])
            chunk += 1
    return [v.decode("utf8") if isinstance(v, bytes) else str(v) for v in raw]


def _keras_var_name(weight_name: str) -> str:
    """'block1a_dwconv/depthwise_kernel:0' (Keras 2) or 'block1a_dwconv/kernel' (Keras 3) -> 'kernel'."""
    name = weight_name.split("/")[-1].split(":")[0]
    return "kernel" if name == "depthwise_kernel" else name


def _keras_normalization(mean, variance, notes: list[str]) -> tuple[tuple, tuple]:
    """The (mean, std) in pixels that a Keras Applications file's network was trained with."""
    mean = np.asarray(mean, np.float64).reshape(-1)
    variance = np.asarray(variance, np.float64).reshape(-1)
    if np.allclose(variance, _KERAS_RELEASED_VARIANCE, rtol=0, atol=1e-6):
        # A released file (or one fine-tuned from it): converted from the tensorflow/tpu EMA weights, trained
        # on (x - mean) / std. That is what weights="imagenet" computes; weights=<this file> would compute
        # (x - mean) / sqrt(std), Keras's bug, not what the network learnt.
        notes.append("Keras released-weights normalisation (std stored as variance): read as "
                     "weights='imagenet' does, (x/255 - mean) / std")
        std = variance
    else:
        # Anything else loads as EfficientNetB<k>(weights=<file>) computes: (x/255 - mean) / sqrt(variance).
        std = np.maximum(np.sqrt(variance), keras.config.epsilon())
    return tuple(mean * 255.0), tuple(std * 255.0)


def _read_keras_h5(path: str, notes: list[str]) -> _Source:
    entries, norm = [], None
    with h5py.File(path, "r") as f:
        group = f if _h5_attr_list(f, "layer_names") else f["model_weights"]
        for layer in _h5_attr_list(group, "layer_names"):
            weight_names = _h5_attr_list(group[layer], "weight_names")
            if not weight_names:
                continue
            values = [np.asarray(group[layer][w]) for w in weight_names]
            if layer.startswith("normalization"):
                norm = values
                continue
            for weight_name, value in zip(weight_names, values):
                entries.append((f"{layer}/{_keras_var_name(weight_name)}", value, f"{layer}/{weight_name}"))
    if norm is None:
        raise ValueError(f"{path}: Keras weights without the Normalization layer every "
                         "keras.applications EfficientNet has; not an EfficientNet file")
    mean, std = _keras_normalization(norm[0], norm[1], notes)
    return _Source(entries, mean, std, "single", notes)


_V3_VAR_NAMES = {
    "conv2d": ("kernel", "bias"),
    "depthwise_conv2d": ("kernel",),
    "batch_normalization": _BN_VARS,
    "dense": ("kernel", "bias"),
    "normalization": ("mean", "variance", "count"),
}


def _keras_layout(params) -> list[tuple[str, str]]:
    """(layer name, Keras class in snake case) of every weighted layer of keras.applications'
    EfficientNet built from `params`, in its layer order (ours builds the same layers in the same order)."""
    seq = [("normalization", "normalization"), ("stem_conv", "conv2d"), ("stem_bn", "batch_normalization")]
    for spec in decode_blocks(params):
        n = spec.name
        if spec.expand_ratio != 1:
            seq += [(f"{n}_expand_conv", "conv2d"), (f"{n}_expand_bn", "batch_normalization")]
        seq += [(f"{n}_dwconv", "depthwise_conv2d"), (f"{n}_bn", "batch_normalization")]
        if spec.se_filters:
            seq += [(f"{n}_se_reduce", "conv2d"), (f"{n}_se_expand", "conv2d")]
        seq += [(f"{n}_project_conv", "conv2d"), (f"{n}_project_bn", "batch_normalization")]
    return seq + [("top_conv", "conv2d"), ("top_bn", "batch_normalization"), ("predictions", "dense")]


def _v3_paths(params) -> dict[str, str]:
    """{'layers/conv2d_3': 'block1a_project_conv', ...}: Keras 3 names each layer's group after its class
    with a per-class counter in layer order (saving_lib._save_container_state)."""
    counters, paths = {}, {}
    for name, cls in _keras_layout(params):
        n = counters.get(cls, -1) + 1
        counters[cls] = n
        paths[f"layers/{cls}" + (f"_{n}" if n else "")] = name
    return paths


def _read_keras_v3(path: str, model, notes: list[str]) -> _Source:
    with h5py.File(path, "r") as f:
        groups = {}
        for child in f["layers"]:
            vars_group = f["layers"][child].get("vars")
            if isinstance(vars_group, h5py.Group) and len(vars_group):
                ordered = sorted(vars_group, key=int)
                name = vars_group.attrs.get("name")
                name = name.decode("utf8") if isinstance(name, bytes) else name
                groups[f"layers/{child}"] = (name, [np.asarray(vars_group[k]) for k in ordered])
    if not groups:
        raise ValueError(f"{path}: a Keras 3 weights file with no layer variables at its top level "
                         "(a model wrapping EfficientNet is not a keras.applications EfficientNet file)")
    if all(name is not None for name, _ in groups.values()):
        # Keras >= 3.10 records each layer's name beside its variables.
        names = {group: str(name) for group, (name, _) in groups.items()}
    else:
        names = _match_v3_layout(path, model, groups)
    entries, norm = [], None
    for group, (_, values) in groups.items():
        layer, cls = names.get(group), re.sub(r"_\d+$", "", group.split("/", 1)[1])
        if layer is None or cls not in _V3_VAR_NAMES or len(values) > len(_V3_VAR_NAMES[cls]):
            raise ValueError(f"{path}: {group} (a {cls} layer with {len(values)} variables) is not part of a "
                             "keras.applications EfficientNet")
        if cls == "normalization":
            norm = values
            continue
        for i, (var, value) in enumerate(zip(_V3_VAR_NAMES[cls], values)):
            entries.append((f"{layer}/{var}", value, f"{group}/vars/{i} ({layer})"))
    if norm is None:
        raise ValueError(f"{path}: Keras weights without the Normalization layer every "
                         "keras.applications EfficientNet has; not an EfficientNet file")
    mean, std = _keras_normalization(norm[0], norm[1], notes)
    return _Source(entries, mean, std, "single", notes)


def _match_v3_layout(path, model, groups) -> dict[str, str]:
    """Layer names for a Keras 3 file written before Keras recorded them: the B0-B7 layout (or the
    model's own) whose groups and shapes the file has, the classifier's class count aside."""
    found = {group: [v.shape for v in values] for group, (_, values) in groups.items()}
    candidates = [params_for(v) for v in VARIANTS]
    if getattr(model, "params", None) is not None:
        candidates.insert(0, model.params)
    for params in candidates:
        paths = _v3_paths(params)
        if not set(found) <= set(paths) or not {p for p, n in paths.items() if n != "predictions"} <= set(found):
            continue
        shapes = _keras_layout_shapes(params)
        if all(paths[g] == "predictions" or [tuple(s) for s in found[g]] == shapes[paths[g]] for g in found):
            return paths
    raise ValueError(f"{path}: a Keras 3 weights file without layer names whose groups match no "
                     "keras.applications EfficientNet-B0..B7 layout")


def _keras_layout_shapes(params) -> dict[str, list[tuple]]:
    """Variable shapes per Keras layer name, computed from the block table (no model built)."""
    stem = round_filters(params.stem_filters, params.width_coefficient, params.depth_divisor)
    head = round_filters(params.head_filters, params.width_coefficient, params.depth_divisor)
    shapes = {"normalization": [(3,), (3,), ()], "stem_conv": [(3, 3, 3, stem)], "stem_bn": [(stem,)] * 4}
    last = stem
    for spec in decode_blocks(params):
        n, mid = spec.name, spec.filters_expanded
        if spec.expand_ratio != 1:
            shapes[f"{n}_expand_conv"] = [(1, 1, spec.filters_in, mid)]
            shapes[f"{n}_expand_bn"] = [(mid,)] * 4
        shapes[f"{n}_dwconv"] = [(spec.kernel_size, spec.kernel_size, mid, 1)]
        shapes[f"{n}_bn"] = [(mid,)] * 4
        if spec.se_filters:
            shapes[f"{n}_se_reduce"] = [(1, 1, mid, spec.se_filters), (spec.se_filters,)]
            shapes[f"{n}_se_expand"] = [(1, 1, spec.se_filters, mid), (mid,)]
        shapes[f"{n}_project_conv"] = [(1, 1, mid, spec.filters_out)]
        shapes[f"{n}_project_bn"] = [(spec.filters_out,)] * 4
        last = spec.filters_out
    shapes["top_conv"] = [(1, 1, last, head)]
    shapes["top_bn"] = [(head,)] * 4
    return shapes


# ---------------------------------------------------------------------------------------------------------
# tensorflow/tpu checkpoints

_TPU_EMA = "/ExponentialMovingAverage"
_TPU_STEM = re.compile(r"^[^/]+/stem/conv2d/kernel(/ExponentialMovingAverage)?$")


def _tpu_block_layers(has_expand: bool) -> dict[str, str]:
    """tensorflow/tpu variable scope inside blocks_<i> -> our layer suffix. Its tf.layers are named when
    first called, in call order: expand conv, depthwise, SE (in scope 'se'), project; BN likewise."""
    if has_expand:
        return {"conv2d": "expand_conv", "conv2d_1": "project_conv", "tpu_batch_normalization": "expand_bn",
                "tpu_batch_normalization_1": "bn", "tpu_batch_normalization_2": "project_bn",
                "depthwise_conv2d": "dwconv", "se/conv2d": "se_reduce", "se/conv2d_1": "se_expand"}
    return {"conv2d": "project_conv", "tpu_batch_normalization": "bn", "tpu_batch_normalization_1": "project_bn",
            "depthwise_conv2d": "dwconv", "se/conv2d": "se_reduce", "se/conv2d_1": "se_expand"}


def _read_tpu(path: str, prefix: str, model, weights: str, notes: list[str]) -> _Source:
    keys = _checkpoint_keys(path, prefix)
    stem = next(k for k in keys if _TPU_STEM.match(k))
    scope = stem.split("/")[0]
    try:
        block_names = [s.name for s in decode_blocks(params_for(scope))]
    except ValueError:  # efficientnet-b8, -l2, ...: not one of ours; the model's table says what it expects
        block_names = [s.name for s in decode_blocks(model.params)]
    # Optimizer slots (RMSProp, Momentum) sit beside each variable; only the network and its shadows count.
    network = sorted({k[: -len(_TPU_EMA)] if k.endswith(_TPU_EMA) else k for k in keys
                      if k.startswith(scope + "/") and re.search(r"/(kernel|bias|depthwise_kernel|gamma|beta|"
                                                                  r"moving_mean|moving_variance)"
                                                                  rf"({re.escape(_TPU_EMA)})?$", k)})
    reader = _checkpoint_reader(path, prefix)
    entries, from_ema = [], 0
    for name in network:
        m = re.match(r"^(stem|head|blocks_(\d+))/(.+)/([a-z_]+)$", name[len(scope) + 1:])
        if not m:
            raise ValueError(f"{path}: unexpected variable {name} in a tensorflow/tpu EfficientNet checkpoint")
        part, index, layer, var = m.group(1), m.group(2), m.group(3), m.group(4)
        if var == "depthwise_kernel":
            var = "kernel"
        if part == "stem":
            ours = {"conv2d": "stem_conv", "tpu_batch_normalization": "stem_bn"}.get(layer)
        elif part == "head":
            ours = {"conv2d": "top_conv", "tpu_batch_normalization": "top_bn", "dense": "predictions"}.get(layer)
        else:
            i = int(index)
            has_expand = any(k.startswith(f"{scope}/blocks_{i}/conv2d_1/kernel") for k in keys)
            block = block_names[i] if i < len(block_names) else f"blocks_{i}"
            suffix = _tpu_block_layers(has_expand).get(layer)
            ours = suffix and f"{block}_{suffix}"
        if ours is None:
            raise ValueError(f"{path}: unexpected variable {name} in a tensorflow/tpu EfficientNet checkpoint")
        source = name
        if name + _TPU_EMA in keys and (weights == "ema" or name not in keys):
            source, from_ema = name + _TPU_EMA, from_ema + 1
        entries.append((f"{ours}/{var}", _get_tensor(path, reader, source), source))
    used = "ema" if from_ema else "raw"
    if weights == "ema" and not from_ema:
        notes.append("the checkpoint holds no ExponentialMovingAverage shadows: raw weights loaded")
    elif weights == "ema" and from_ema < len(entries):
        notes.append(f"{len(entries) - from_ema} variables without an EMA shadow loaded raw")
    elif weights == "raw" and from_ema:
        notes.append(f"{from_ema} variables exist only as EMA shadows and were loaded from them")
    notes.append("input normalisation assumed to be tensorflow/tpu's MEAN_RGB/STDDEV_RGB (ImageNet); "
                 "AdvProp checkpoints need input_normalization=((127.5,)*3, (127.5,)*3)")
    return _Source(entries, tuple(IMAGENET_MEAN), tuple(IMAGENET_STD), used, notes, blocks_hint=scope)


def _checkpoint_reader(path: str, prefix: str):
    try:
        return tf.train.load_checkpoint(prefix)
    except (tf.errors.OpError, ValueError) as e:
        raise ValueError(f"{path}: unreadable TensorFlow checkpoint: {_one_line(e)}") from None


def _get_tensor(path: str, reader, key: str) -> np.ndarray:
    try:
        return np.asarray(reader.get_tensor(key))
    except (tf.errors.OpError, ValueError, IndexError) as e:  # IndexError: the data file ends early
        raise ValueError(f"{path}: checkpoint data for {key} is unreadable (truncated or corrupt data file): "
                         f"{_one_line(e)}") from None


# ---------------------------------------------------------------------------------------------------------
# our own checkpoints

def _model_trails(model) -> dict[tuple[str, ...], str]:
    """{object path from the checkpoint root: variable path} of `tf.train.Checkpoint(model=model)`, from
    TensorFlow's own view of the object graph (Keras's attribute layout, e.g. model/_operations/2/_kernel)."""
    root = tf.train.Checkpoint(model=model)
    view = tf.train.TrackableView(root)
    trails, seen = {}, set()

    def walk(obj, trail):
        if id(obj) in seen:
            return
        seen.add(id(obj))
        if isinstance(obj, keras.Variable):
            trails[trail] = obj.path
            return
        for name, child in view.children(obj).items():
            walk(child, trail + (name,))

    walk(root, ())
    return trails


def _file_variables(path: str, reader, below: str) -> dict[tuple[str, ...], str]:
    """{object path: checkpoint key} of every variable reachable from the checkpoint root's child `below`,
    read from the checkpoint's own object graph. A variable is saved once, under the first path TensorFlow
    found to it: train.py's trainable weights are keyed under optimizer/_trainable_variables/<i>, not under
    model/..., so keys cannot be derived from the model's attribute names alone."""
    from tensorflow.core.protobuf import trackable_object_graph_pb2
    graph = trackable_object_graph_pb2.TrackableObjectGraph()
    try:
        graph.ParseFromString(reader.get_tensor("_CHECKPOINTABLE_OBJECT_GRAPH"))
    except (tf.errors.OpError, ValueError) as e:
        raise ValueError(f"{path}: checkpoint without a readable object graph: {_one_line(e)}") from None
    found, seen = {}, set()

    def walk(node_id, trail):
        if node_id in seen:
            return
        seen.add(node_id)
        node = graph.nodes[node_id]
        value = [a.checkpoint_key for a in node.attributes if a.name == "VARIABLE_VALUE"]
        if value:
            found[trail] = value[0]
            return
        for child in node.children:
            walk(child.node_id, trail + (child.local_name,))

    for child in graph.nodes[0].children:
        if child.local_name == below:
            walk(child.node_id, (below,))
    return found


def _read_ours(path: str, prefix: str, model, weights: str, notes: list[str]) -> _Source:
    keys = _checkpoint_keys(path, prefix)
    reader = _checkpoint_reader(path, prefix)
    trails = _model_trails(model)
    in_file = _file_variables(path, reader, "model")
    variables = [w.path for w in model.weights]
    shadows = _file_variables(path, reader, "ema")
    use_ema = weights == "ema" and ("ema", "shadows", "0") in shadows
    if weights == "ema" and not use_ema:
        notes.append("the checkpoint holds no EMA shadows: raw weights loaded")
    entries = []
    for trail, key in sorted(in_file.items()):
        var = trails.get(trail)
        source = key
        if var is not None and use_ema:
            # Shadows follow model.weights order; when every raw variable fits the model (checked with the
            # rest), the network is the same and so is the order.
            shadow = ("ema", "shadows", str(variables.index(var)))
            if shadow not in shadows:
                raise ValueError(f"{path}: EMA shadow {'/'.join(shadow)} is missing (the checkpoint has fewer "
                                 "shadows than model variables)")
            source = shadows[shadow]
        # A variable the model has no place for stays in, under a name no variable has, for the error.
        entries.append((var or f"<checkpoint {'/'.join(trail)}>", _Lazy(path, reader, source, tuple(keys[source])),
                        source))
    spec = _run_spec(prefix)
    hint = f"{spec.get('variant')}, {spec.get('num_classes')} classes" if spec else ""
    mean, std = _run_spec_normalization(spec) if spec else (None, None)  # None: the model's own
    return _Source(entries, mean, std, "ema" if use_ema else "raw", notes, blocks_hint=hint)


def _run_spec(prefix: str) -> dict | None:
    """train.py's run_spec.json beside a checkpoint (what network it holds), when there is one."""
    spec_path = os.path.join(os.path.dirname(prefix), "run_spec.json")
    if not os.path.isfile(spec_path):
        return None
    with open(spec_path) as f:
        return json.load(f)


def _run_spec_normalization(spec: dict) -> tuple[tuple, tuple]:
    """The input normalisation the run's model had: its input_mean/input_std overrides, else our default."""
    overrides = spec.get("model_overrides") or {}
    params = params_for("b0", **{k: overrides[k] for k in ("input_mean", "input_std") if k in overrides})
    return params.input_mean, params.input_std


@dataclasses.dataclass
class _Lazy:
    """A checkpoint tensor read only once every shape has been checked."""

    path: str
    reader: object
    key: str
    shape: tuple

    def load(self) -> np.ndarray:
        return _get_tensor(self.path, self.reader, self.key)


# ---------------------------------------------------------------------------------------------------------
# timm safetensors

def _safetensors_keys(path: str) -> list[str]:
    from safetensors import SafetensorError, safe_open
    try:
        with safe_open(path, framework="np") as f:
            return list(f.keys())
    except (SafetensorError, OSError) as e:
        raise ValueError(f"{path}: unreadable safetensors file (truncated or corrupt): {_one_line(e)}") from None


# timm module -> our layer suffix. 'ds' blocks (stage 0, no expansion) name their BNs bn1/bn2 and their
# 1x1 projection conv_pw; inverted-residual blocks use conv_pw for the expansion and conv_pwl to project.
_TIMM_DS = {"conv_dw": "dwconv", "bn1": "bn", "se.conv_reduce": "se_reduce", "se.conv_expand": "se_expand",
            "conv_pw": "project_conv", "bn2": "project_bn"}
_TIMM_IR = {"conv_pw": "expand_conv", "bn1": "expand_bn", "conv_dw": "dwconv", "bn2": "bn",
            "se.conv_reduce": "se_reduce", "se.conv_expand": "se_expand", "conv_pwl": "project_conv",
            "bn3": "project_bn"}
_TIMM_TOP = {"conv_stem": "stem_conv", "bn1": "stem_bn", "conv_head": "top_conv", "bn2": "top_bn",
             "classifier": "predictions"}
_TIMM_VARS = {"weight": "kernel", "bias": "bias", "running_mean": "moving_mean", "running_var": "moving_variance"}
_TIMM_BN_VARS = {"weight": "gamma", "bias": "beta", "running_mean": "moving_mean", "running_var": "moving_variance"}


def _from_torch(layer: str, value: np.ndarray) -> np.ndarray:
    """PyTorch layouts to Keras: conv OIHW -> HWIO, depthwise (C, 1, kH, kW) -> (kH, kW, C, 1), linear
    (out, in) -> (in, out)."""
    if value.ndim == 4:
        return np.transpose(value, (2, 3, 0, 1) if layer.endswith("dwconv") else (2, 3, 1, 0))
    if value.ndim == 2:
        return value.T
    return value


def _timm_config(path: str) -> tuple[tuple, tuple] | None:
    """mean/std from a Hugging Face hub config.json beside the file (timm writes pretrained_cfg there), None
    without one. Refuses an architecture other than the tf_ ports."""
    config_path = os.path.join(os.path.dirname(os.path.abspath(path)), "config.json")
    if not os.path.isfile(config_path):
        return None
    with open(config_path) as f:
        config = json.load(f)
    arch = str(config.get("architecture", ""))
    if arch and not arch.startswith("tf_"):
        raise ValueError(f"{path}: config.json says architecture {arch!r}; only timm's tf_efficientnet_b<k> "
                         "ports compute what ours does (the PyTorch-native ones pad symmetrically and use BN "
                         "eps 1e-5)")
    cfg = config.get("pretrained_cfg", config)
    mean = tuple(float(m) * 255.0 for m in cfg.get("mean", (0.485, 0.456, 0.406)))
    std = tuple(float(s) * 255.0 for s in cfg.get("std", (0.229, 0.224, 0.225)))
    return mean, std


def _read_timm(path: str, notes: list[str]) -> _Source:
    from safetensors import SafetensorError
    from safetensors.numpy import load_file
    try:
        tensors = load_file(path)
    except (SafetensorError, OSError) as e:
        raise ValueError(f"{path}: unreadable safetensors file (truncated or corrupt): {_one_line(e)}") from None
    recorded = _timm_config(path)
    if recorded is None:
        notes.append("no config.json beside the file: assumed a tf_efficientnet_b<k> with ImageNet mean/std "
                     "('same' padding, BN eps 1e-3)")
    mean, std = recorded or (tuple(IMAGENET_MEAN), tuple(IMAGENET_STD))
    entries = []
    for key, value in tensors.items():
        if key.endswith("num_batches_tracked"):
            continue
        m = re.match(r"^blocks\.(\d+)\.(\d+)\.(.+)\.([a-z_]+)$", key)
        if m:
            stage, index, module, var = int(m.group(1)), int(m.group(2)), m.group(3), m.group(4)
            block = f"block{stage + 1}{chr(ord('a') + index)}"
            table = _TIMM_DS if stage == 0 else _TIMM_IR
            suffix = table.get(module)
            layer = suffix and f"{block}_{suffix}"
        else:
            module, _, var = key.rpartition(".")
            layer = _TIMM_TOP.get(module)
        if layer is None or var not in _TIMM_VARS:
            raise ValueError(f"{path}: unexpected key {key} for a timm tf_efficientnet state dict")
        name = (_TIMM_BN_VARS if layer.endswith("bn") else _TIMM_VARS)[var]
        entries.append((f"{layer}/{name}", _from_torch(layer, np.asarray(value)), key))
    return _Source(entries, mean, std, "single", notes)


# ---------------------------------------------------------------------------------------------------------
# loading

_SUBLAYERS = ("expand_conv", "expand_bn", "dwconv", "bn", "se_reduce", "se_expand", "project_conv", "project_bn")
_VAR_ORDER = ("kernel", "bias") + _BN_VARS


def _network_order(key: str):
    """Sort key putting variables in network order (stem, blocks by stage and letter, head), so 'the first
    variable that does not fit' is the one nearest the input whatever order the file lists them in."""
    layer, _, var = key.partition("/")
    var_rank = _VAR_ORDER.index(var) if var in _VAR_ORDER else len(_VAR_ORDER)
    m = re.match(r"^block(\d+)([a-z]+)_(.+)$", layer)
    if m:
        sub = _SUBLAYERS.index(m.group(3)) if m.group(3) in _SUBLAYERS else len(_SUBLAYERS)
        return (1, int(m.group(1)), m.group(2), sub, var_rank)
    top = {"stem_conv": (0, 0), "stem_bn": (0, 1), "top_conv": (2, 0), "top_bn": (2, 1), "predictions": (3, 0)}
    section, sub = top.get(layer, (4, 0))
    return (section, 0, "", sub, var_rank, layer)


def _blocks(keys) -> int:
    return len({m.group(1) for k in keys if (m := re.match(r"^(block\d+[a-z]+)_", k))})


def _shape(value) -> tuple:
    return tuple(int(d) for d in value.shape)


def _misfit(path, model, source: _Source, name: str, expected, found, entries_keys) -> ValueError:
    model_blocks = _blocks(w.path for w in model.weights)
    file_blocks = _blocks(entries_keys)
    hint = ""
    if model_blocks != file_blocks and file_blocks:
        hint = f" (the model has {model_blocks} MBConv blocks, the file {file_blocks})"
    if source.blocks_hint:
        hint += f" (the file is {source.blocks_hint})"
    expected = "nothing (no such variable)" if expected is None else str(expected)
    found = "nothing (not in the file)" if found is None else str(found)
    return ValueError(f"{path}: {name} does not fit {model.name}: expected shape {expected}, found {found}{hint}")


def _model_normalization(model) -> tuple[np.ndarray, np.ndarray]:
    """(mean, std) in pixels of the model's `normalize` Rescaling: y = x * scale + offset."""
    layer = model.get_layer("normalize")
    scale = np.broadcast_to(np.asarray(layer.scale, np.float64), (3,))
    offset = np.broadcast_to(np.asarray(layer.offset, np.float64), (3,))
    return -offset / scale, 1.0 / scale


def load_into(model: keras.Model, path: str, *, weights: str = "ema", skip_head: bool = False,
              replace_head: bool = False, exclude: Sequence[str] = (),
              input_normalization: tuple[Sequence[float], Sequence[float]] | None = None) -> LoadReport:
    """Assigns every variable of `model` (built by efficientnet.build_model) from the weights at `path`.

    weights: "ema" prefers the exponential-moving-average weights of formats that keep both (ours, tpu)
      and falls back to the raw ones when the file has none (reported); "raw" takes the raw ones.
    skip_head: leave the classifier (`predictions`) as it is, whatever the file holds.
    replace_head: allow a file whose classifier has another class count, or none (a _notop file), and keep
      the model's own; without it that is an error.
    exclude: regular expressions matched at the start of our variable paths (`predictions`, `top_`,
      `block7`, `.*_bn/moving_`): those variables stay as they are and the file's values for them are not
      read or checked. A pattern that matches no variable is an error (a typo would otherwise load everything).
    input_normalization: (mean, std) in 0-255 pixels the source network was trained with, for files that do
      not record it (tpu, timm without config.json; default ImageNet's) or to override a file's.
      A different scale is folded into the stem kernel exactly; a different mean cannot be (the stem's zero
      padding would differ) and is an error unless the model was built with that mean (ModelParams.input_mean).

    Raises FileNotFoundError or ValueError with one line naming the file and what is wrong. Nothing is
    assigned unless everything fits.
    """
    path = os.fspath(path)
    if weights not in WEIGHTS:
        raise ValueError(f"weights={weights!r}: expected one of {', '.join(WEIGHTS)}")
    variables = {w.path: w for w in model.weights}
    excluded = excluded_variables(model, exclude)
    source = _read(path, model, weights)
    if input_normalization is not None:
        source.mean, source.std = (tuple(float(v) for v in input_normalization[0]),
                                   tuple(float(v) for v in input_normalization[1]))

    head_vars = [p for p in variables if p.startswith("predictions/")]
    entries = sorted(source.entries, key=lambda e: _network_order(e[0]))
    entry_keys = [e[0] for e in entries]
    file_head = {k: _shape(v) for k, v, _ in entries if k.startswith("predictions/")}
    model_head = {p: tuple(variables[p].shape) for p in head_vars}

    head = "loaded"
    if skip_head:
        head = "skipped (skip_head)"
    elif head_vars and all(p in excluded for p in head_vars):
        head = "skipped (excluded)"
    elif file_head != model_head:
        n_file = file_head.get("predictions/bias", (None,))[0]
        n_model = model_head.get("predictions/bias", (None,))[0]
        features_fit = (not file_head or file_head.get("predictions/kernel", (None,))[0]
                        == model_head.get("predictions/kernel", (None,))[0])
        if not features_fit:
            pass  # an architecture mismatch: the generic check below names it
        elif replace_head:
            head = (f"new: the file has none, the model's {n_model} classes keep their initialisation"
                    if not file_head else f"replaced: the file has {n_file} classes, the model {n_model}; the "
                                          "model's new classifier keeps its initialisation")
        elif not file_head:
            raise ClassifierMismatch(
                f"{path}: the file has no classifier (a notop file) but {model.name} has one with {n_model} "
                "classes; pass skip_head=True or replace_head=True to keep the model's", path, None, n_model)
        else:
            raise ClassifierMismatch(
                f"{path}: the file's classifier has {n_file} classes, {model.name}'s {n_model}; pass "
                f"replace_head=True to start a new classifier, or build the model with {n_file} classes",
                path, n_file, n_model)
    left = set(excluded) | (set(head_vars) if head != "loaded" else set())

    assign = []
    for key, value, name in entries:
        if key in left:
            continue
        expected = tuple(variables[key].shape) if key in variables else None
        if expected != _shape(value):
            raise _misfit(path, model, source, name if name == key else f"{name} (our {key})", expected,
                          _shape(value), entry_keys)
        assign.append((variables[key], value))
    provided = set(entry_keys)
    for p, var in variables.items():
        if p not in provided and p not in left:
            raise _misfit(path, model, source, p, tuple(var.shape), None, entry_keys)

    model_mean, model_std = _model_normalization(model)
    stem_scale = None
    if source.mean is not None:
        if np.max(np.abs(np.asarray(source.mean) - model_mean)) > _MEAN_TOLERANCE:
            raise ValueError(
                f"{path}: the source network expects inputs normalised with mean "
                f"{_fmt(source.mean)} and std {_fmt(source.std)} (pixels) but {model.name} subtracts "
                f"{_fmt(model_mean)}; a different mean cannot be folded into the stem exactly (its zero padding "
                f"would differ): build the model with input_mean={_param(source.mean)},"
                f"input_std={_param(source.std)} (--mparams)")
        ratio = model_std / np.asarray(source.std, np.float64)
        if np.max(np.abs(ratio - 1.0)) > 1e-6 and "stem_conv/kernel" not in left:
            # The model feeds z = (x - mean) / std_model to the stem; the source's kernel wants
            # (x - mean) / std_source = z * ratio. Scaling the kernel's input channels by ratio is exact,
            # zero padding included (0 * ratio = 0).
            stem_scale = ratio
    else:
        source.mean, source.std = tuple(float(v) for v in model_mean), tuple(float(v) for v in model_std)

    # Everything is read before anything is assigned: a truncated data file fails with the model untouched.
    arrays = [value.load() if isinstance(value, _Lazy) else np.asarray(value) for _, value in assign]
    for (var, _), array in zip(assign, arrays):
        if stem_scale is not None and var.path == "stem_conv/kernel":
            array = (array.astype(np.float64) * stem_scale.reshape(1, 1, 3, 1)).astype(np.float32)
        var.assign(array.astype(var.dtype))
    return LoadReport(path=path, format=source.format, weights=source.weights, assigned=len(assign),
                      skipped=tuple(p for p in variables if p in left), head=head,
                      source_mean=tuple(source.mean), source_std=tuple(source.std),
                      stem_rescaled=stem_scale is not None, notes=tuple(source.notes))


def excluded_variables(model: keras.Model, patterns: Sequence[str]) -> list[str]:
    """Paths of the model's variables matched at their start by any of `patterns` (regular expressions);
    ValueError for a pattern that is no regular expression or matches nothing."""
    variables = [w.path for w in model.weights]
    excluded = []
    for pattern in patterns:
        try:
            regex = re.compile(pattern)
        except re.error as e:
            raise ValueError(f"exclude pattern {pattern!r} is not a regular expression: {e}") from None
        matched = [p for p in variables if regex.match(p)]
        if not matched:
            raise ValueError(f"exclude pattern {pattern!r} matches no variable of the model (variables are named "
                             "like stem_conv/kernel, block6a_expand_bn/gamma, top_conv/kernel, predictions/bias)")
        excluded += [p for p in matched if p not in excluded]
    return excluded


def _read(path: str, model, weights: str) -> _Source:
    """The file at `path` as (our variable path, value) entries, whatever its format."""
    fmt = detect_format(path)
    notes: list[str] = []
    if fmt == "ours":
        source = _read_ours(path, _checkpoint_prefix(path), model, weights, notes)
    elif fmt == "tpu":
        source = _read_tpu(path, _checkpoint_prefix(path), model, weights, notes)
    elif fmt == "keras_h5":
        source = _read_keras_h5(path, notes)
    elif fmt == "keras_v3":
        source = _read_keras_v3(path, model, notes)
    else:
        source = _read_timm(_timm_file(path), notes)
    source.format = fmt
    return source


def _param(values) -> str:
    """Per-channel values as --mparams spells them: one number when all agree, else R:G:B."""
    values = [float(f"{v:.4f}") for v in values]
    return f"{values[0]:g}" if len(set(values)) == 1 else ":".join(f"{v:g}" for v in values)


def _fmt(values) -> str:
    return "(" + ", ".join(f"{float(v):.3f}" for v in values) + ")"


# ---------------------------------------------------------------------------------------------------------
# saving

# ModelParams fields that keras.applications' EfficientNet does not fix: training-only settings (the classifier's
# initializer among them), the class count (its `classes`), and the normalisation, which its Normalization layer
# holds as weights.
_KERAS_FREE_FIELDS = ("num_classes", "dropout_rate", "drop_connect_rate", "bn_momentum", "sync_bn", "resolution",
                      "input_mean", "input_std", "classifier_init")


def standard_variant(params) -> str | None:
    """The variant ('b0'..'b7') whose width and depth coefficients `params` has, if any."""
    return next((v for v, (w, d, _, _) in VARIANTS.items()
                 if (w, d) == (params.width_coefficient, params.depth_coefficient)), None)


def check_keras_architecture(name: str, params, *, any_coefficients: bool = False):
    """Refuses a model keras.applications cannot build (--mparams changed its architecture). Its EfficientNetB<k>
    exist for the eight variants' width and depth coefficients only; its builder (`any_coefficients`) takes any."""
    variant = standard_variant(params)
    reference = params_for(variant or "b0", **({"width_coefficient": params.width_coefficient,
                                                 "depth_coefficient": params.depth_coefficient}
                                                if any_coefficients else {}))
    if params.activation not in ("swish", "silu"):
        raise ValueError(f"{name}: activation={params.activation!r}; keras.applications EfficientNet uses swish")
    for field in dataclasses.fields(params):
        if field.name in _KERAS_FREE_FIELDS + ("activation",):
            continue
        mine, theirs = getattr(params, field.name), getattr(reference, field.name)
        if mine != theirs:
            raise ValueError(f"{name}: {field.name}={mine!r}, but no keras.applications EfficientNet has that "
                             f"(its {field.name} is {theirs!r}): it can neither build this model nor read its "
                             "weights")


def keras_applications_model(params, *, input_shape: tuple[int, int, int],
                             classifier_activation: str | None = None) -> keras.Model:
    """keras.applications' EfficientNet with `params`' architecture, class count, dropout rates, BatchNorm momentum
    and classifier initializer, randomly initialised: the baseline our scripts set beside our model. A network
    shrunk with --mparams width_coefficient/depth_coefficient is built too (by the builder EfficientNetB<k>
    call), so a comparison on a small network compares the same network on both sides."""
    check_keras_architecture("keras_applications_model", params, any_coefficients=True)
    model = keras_efficientnet.EfficientNet(
        params.width_coefficient, params.depth_coefficient, params.resolution, params.dropout_rate,
        drop_connect_rate=params.drop_connect_rate, name=f"efficientnet{standard_variant(params) or ''}",
        weights=None, input_shape=input_shape, classes=params.num_classes,
        classifier_activation=classifier_activation)
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.momentum = params.bn_momentum
    if params.classifier_init != "fan_out":  # Keras's own classifier init is the reference's fan_out
        kernel = model.get_layer("predictions").kernel
        kernel.assign(keras.initializers.get(classifier_initializer(params.classifier_init))(kernel.shape))
    return model


def save_keras_weights(model: keras.Model, path: str, *, include_top: bool = True) -> str:
    """Writes `model`'s weights as a keras.applications weights file: the legacy HDF5 layout of the released
    efficientnetb<k>.h5 (any name but *.weights.h5), or Keras 3's layout for a name ending in .weights.h5,
    which is how Keras picks the reader. `keras.applications.EfficientNetB<k>(weights=path,
    classes=<our class count>, classifier_activation=None)` then computes our logits.

    The Normalization layer is written so that Keras's (x/255 - mean) / sqrt(variance) equals our
    normalisation: mean = our mean / 255, variance = (our std / 255)^2 (not the released files' std-as-variance,
    which only weights="imagenet" reads correctly). include_top=False writes a _notop file.
    """
    params = getattr(model, "params", None)
    if params is None:
        raise ValueError(f"{model.name} was not built by efficientnet.build_model (no .params): its Keras "
                         "Applications layout is unknown")
    check_keras_architecture(model.name, params)
    path = os.fspath(path)
    mean, std = _model_normalization(model)
    by_layer = {}
    for layer in model.layers:
        if layer.weights:
            by_layer[layer.name] = [np.asarray(w.numpy()) for w in layer.weights]
    by_layer["normalization"] = [(mean / 255.0).astype(np.float32), ((std / 255.0) ** 2).astype(np.float32),
                                 np.array(0, np.int64)]
    layout = [(name, cls) for name, cls in _keras_layout(params) if include_top or name != "predictions"]
    missing = [name for name, _ in layout if name not in by_layer]
    if missing:
        raise ValueError(f"{model.name} has no layer {missing[0]} of the keras.applications layout")
    tmp = path + ".tmp"
    if path.endswith(".weights.h5"):
        with h5py.File(tmp, "w") as f:
            f.create_group("vars")
            paths = {name: group for group, name in _v3_paths(params).items()}
            for name, cls in layout:
                vars_group = f.create_group(paths[name]).create_group("vars")
                vars_group.attrs["name"] = name
                for i, value in enumerate(by_layer[name]):
                    vars_group[str(i)] = value
    else:
        with h5py.File(tmp, "w") as f:
            f.attrs["layer_names"] = [name.encode("utf8") for name, _ in layout]
            f.attrs["backend"] = "tensorflow".encode("utf8")
            f.attrs["keras_version"] = keras.__version__.encode("utf8")
            for name, cls in layout:
                group = f.create_group(name)
                names = [f"{name}/{var}" for var in _V3_VAR_NAMES[cls][:len(by_layer[name])]]
                group.attrs["weight_names"] = [n.encode("utf8") for n in names]
                for weight_name, value in zip(names, by_layer[name]):
                    group.create_dataset(weight_name, data=value)
    os.replace(tmp, path)
    return path
