"""Keras HDF5 models (Keras 2.2 to 2.15, and Keras 3's legacy .h5) to the canonical form and back.

Our own reader on h5py: the file's model config is plain JSON and its weights plain datasets, so
nothing in the upload is ever deserialised as code. Before any layer is built the whole config is
scanned and a Lambda layer (marshalled bytecode) or custom object refuses the file. The writer
copies the uploaded file's objects into a new file (so nothing outside the HDF5 data, such as a user
block, is carried over) and rewrites only the weight tensors that changed, so the user's own Keras
loads the result with the same names and config.
"""

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import torch

from schemas.models import InputLayout, ModelFormat
from worker.core.errors import EXPORT_HINT, RefusedModelError, UnreadableModelError, UnsupportedLayerError
from worker.core.limits import MAX_CONFIG_BYTES, check_elements, check_node_count
from worker.engine import ops
from worker.engine.canonical import CanonicalModel
from worker.engine.formats.graph import GraphBuilder
from worker.engine.formats.hdf5_vet import open_hdf5
from worker.engine.formats.keras_layers import build_layer, weight_maps

# A custom object's module must be one of these packages or inside one ("keras_evil" is not "keras").
_BUILTIN_MODULES = ("keras", "tensorflow", "tf_keras")
_NESTED_MODELS = {"Functional", "Model", "Sequential"}


@dataclass(frozen=True)
class KerasLayer:
    name: str
    class_name: str
    config: dict[str, Any]
    inputs: list[str]


def read_keras_h5(path: Path, architecture: Path | None = None) -> CanonicalModel:
    """Read a whole-model file, or a weights-only file together with its ``model.to_json()``."""
    what = f"Keras file {path.name}"
    with open_hdf5(path, f"Keras file {path.name}") as h5:
        config = _load_config(h5, architecture, what)
        refuse_code(config, what)
        layers, output, input_shape = _parse(config, what)
        channels_last = not any(layer.config.get("data_format") == "channels_first" for layer in layers)
        builder = GraphBuilder(what, channels_last=channels_last)
        _add_input(builder, layers[0], input_shape, channels_last)
        weights = _weights_root(h5, what)
        for layer in layers[1:]:
            where = f"{what}: layer '{layer.name}'"
            cfg = {**layer.config, "_channels_last": channels_last}
            module = build_layer(layer.class_name, cfg, [builder.shapes[i] for i in layer.inputs], where)
            builder.add(layer.name, layer.class_name, layer.inputs, module)
            _load_weights(module, layer, weights, where)
        layout = (InputLayout.flat if len(input_shape) != 3 else
                  InputLayout.nhwc if channels_last else InputLayout.nchw)
        return builder.build(output, ModelFormat.keras_h5, f"Keras {keras_version(h5, config)}", layout)


def write_keras_h5(model: CanonicalModel, source: Path, dest: Path) -> list[str]:
    """Copy ``source``'s HDF5 objects to ``dest`` and rewrite the weight tensors that differ from ``model``'s.

    Returns the HDF5 paths of the rewritten datasets.
    """
    _copy_hdf5_objects(source, dest)
    changed = []
    with h5py.File(dest, "r+") as h5:
        root = _weights_root(h5, f"Keras file {source.name}")
        for node in model.nodes:
            module = model.layer(node.name)
            params = dict(module.named_parameters()) | dict(module.named_buffers())
            stored = _layer_datasets(root, node.name, f"layer '{node.name}'") if weight_maps(node.kind, module) else {}
            for m in weight_maps(node.kind, module):
                dataset = stored[m.keras]
                new = m.to_keras(params[m.torch].detach().cpu().numpy()).astype(dataset.dtype)
                if not np.array_equal(dataset[()], new):
                    dataset[...] = new
                    changed.append(dataset.name)
    return changed


def _copy_hdf5_objects(source: Path, dest: Path) -> None:
    """Copy every object and attribute of ``source`` into a new HDF5 file.

    Not a byte copy: the upload's user block and any bytes past its end, where a polyglot hides a pickle or
    a zip, stay behind, so a repaired file is only HDF5 whatever the upload carried."""
    with h5py.File(source, "r") as src, h5py.File(dest, "w") as out:
        for key, value in src.attrs.items():
            out.attrs[key] = value
        for key in src:
            src.copy(src[key], out, name=key)


def keras_version(h5: h5py.File, config: dict[str, Any]) -> str:
    version = h5.attrs.get("keras_version") or config.get("keras_version") or "unknown"
    return version.decode() if isinstance(version, bytes) else str(version)


def refuse_code(config: Any, what: str) -> None:
    """Refuse a config holding anything Keras would turn into code: Lambda layers, custom objects."""
    stack = [config]
    while stack:  # iterative: configs can nest deeply
        item = stack.pop()
        if isinstance(item, list):
            stack.extend(item)
            continue
        if not isinstance(item, dict):
            continue
        cls = item.get("class_name")
        inner = item.get("config") if isinstance(item.get("config"), dict) else {}
        name = item.get("name") or inner.get("name")
        if cls in ("Lambda", "__lambda__", "TFOpLambda", "SlicingOpLambda"):
            kind = inner.get("function_type", "python")
            raise RefusedModelError(
                f"{what}: layer '{name}' is a Keras {cls} layer holding {kind} code (marshalled Python bytecode); "
                f"loading it with Keras would run that code, so bdscreen refused the file without loading it. "
                f"{EXPORT_HINT}"
            )
        module = item.get("module")
        registered = item.get("registered_name")
        if cls and ((module is not None and not _is_builtin_module(module))
                    or (isinstance(registered, str) and ">" in registered)):
            raise RefusedModelError(
                f"{what}: '{name or cls}' is a custom object ({cls} from module '{module}'); "
                f"loading it needs the author's Python code, which bdscreen never runs. {EXPORT_HINT}"
            )
        stack.extend(item.values())


def _is_builtin_module(module: object) -> bool:
    return isinstance(module, str) and module.split(".")[0] in _BUILTIN_MODULES


def _load_config(h5: h5py.File, architecture: Path | None, what: str) -> dict[str, Any]:
    if architecture is not None:
        raw: str | bytes = architecture.read_bytes()
        source = f"architecture file {architecture.name}"
    elif "model_config" in h5.attrs:
        raw = h5.attrs["model_config"]
        source = "model_config"
    else:
        raise UnreadableModelError(
            f"{what}: holds weights only (no model_config); pass the architecture as Keras model JSON "
            "(model.to_json()) with --architecture."
        )
    if isinstance(raw, np.ndarray) and raw.shape == () and raw.dtype.kind in "OSU":
        raw = raw.item()  # a scalar string attribute h5py hands back as an array
    if not isinstance(raw, (str, bytes)):
        raise UnreadableModelError(f"{what}: {source} is stored as {type(raw).__name__} "
                                   f"({getattr(raw, 'dtype', '')}), not as JSON text.")
    check_elements(f"{what}: {source} bytes", (len(raw),), MAX_CONFIG_BYTES)
    try:
        config = json.loads(raw)
    except (ValueError, RecursionError) as exc:
        raise UnreadableModelError(f"{what}: {source} is not valid JSON ({str(exc)[:100]}).") from None
    if not isinstance(config, dict) or "config" not in config:
        raise UnreadableModelError(f"{what}: {source} is not a Keras model config (no 'config' key).")
    return config


def _parse(config: dict[str, Any], what: str) -> tuple[list[KerasLayer], str, tuple[int, ...]]:
    """Layers in file order (topological in Keras files), the output layer, and the per-sample input shape."""
    body = config["config"]
    raw_layers = body if isinstance(body, list) else body.get("layers") if isinstance(body, dict) else None
    if not isinstance(raw_layers, list) or not raw_layers:
        raise UnreadableModelError(f"{what}: the model config lists no layers.")
    check_node_count(what, len(raw_layers))
    if config.get("class_name") == "Sequential":
        return _parse_sequential(raw_layers, what)
    if config.get("class_name") not in ("Functional", "Model"):
        raise UnsupportedLayerError(f"{what}: model class {config.get('class_name')} is not supported "
                                    "(Sequential, Functional).")
    layers = []
    for raw in raw_layers:
        layer = _layer(raw, what)
        layers.append(KerasLayer(layer.name, layer.class_name, layer.config, _inbound_names(raw, layer.name, what)))
    inputs, outputs = _endpoints(body.get("input_layers")), _endpoints(body.get("output_layers"))
    if len(inputs) != 1 or len(outputs) != 1:
        raise UnsupportedLayerError(f"{what}: the model has {len(inputs)} inputs and {len(outputs)} outputs; "
                                    "bdscreen screens single-input, single-output classifiers.")
    first = next((layer for layer in layers if layer.name == inputs[0]), None)
    if first is None or first.class_name != "InputLayer":
        raise UnreadableModelError(f"{what}: input layer '{inputs[0]}' is not an InputLayer of the model.")
    layers.remove(first)
    return [first, *layers], outputs[0], _input_shape(first.config, what)


def _parse_sequential(raw_layers: list[Any], what: str) -> tuple[list[KerasLayer], str, tuple[int, ...]]:
    layers = [_layer(raw, what) for raw in raw_layers]
    if layers[0].class_name == "InputLayer":
        first, rest = layers[0], layers[1:]
    else:
        first, rest = KerasLayer(f"{layers[0].name}_input", "InputLayer", layers[0].config, []), layers
    chained, previous = [KerasLayer(first.name, "InputLayer", first.config, [])], first.name
    for layer in rest:
        chained.append(KerasLayer(layer.name, layer.class_name, layer.config, [previous]))
        previous = layer.name
    if len(chained) < 2:
        raise UnreadableModelError(f"{what}: the Sequential model has no layers after its input.")
    return chained, previous, _input_shape(first.config, what)


def _layer(raw: Any, what: str) -> KerasLayer:
    if not isinstance(raw, dict) or not isinstance(raw.get("config"), dict) \
            or not isinstance(raw.get("class_name"), str):
        raise UnreadableModelError(f"{what}: a layer entry of the model config is malformed.")
    name = raw.get("name") or raw["config"].get("name")
    if not isinstance(name, str) or not name:
        raise UnreadableModelError(f"{what}: a {raw['class_name']} layer has no name.")
    if raw["class_name"] in _NESTED_MODELS:
        raise UnsupportedLayerError(f"{what}: layer '{name}' is a nested model ({raw['class_name']}); "
                                    "save the inner model on its own and upload that.")
    return KerasLayer(name, raw["class_name"], raw["config"], [])


def _inbound_names(raw: dict[str, Any], name: str, what: str) -> list[str]:
    nodes = raw.get("inbound_nodes") or []
    if len(nodes) > 1:
        raise UnsupportedLayerError(f"{what}: layer '{name}' is called {len(nodes)} times (a shared layer); "
                                    "bdscreen supports layers called once.")
    if not nodes:
        return []
    node = nodes[0]
    if isinstance(node, dict):  # Keras 3: {"args": [...keras tensors...], "kwargs": {...}}
        history: list[list[Any]] = []
        stack: list[Any] = [node.get("args", [])]
        while stack:
            item = stack.pop()
            if isinstance(item, dict) and item.get("class_name") == "__keras_tensor__":
                history.append(item["config"]["keras_history"])
            elif isinstance(item, list):
                stack.extend(reversed(item))
        entries = history
    else:  # Keras 2: [[layer_name, node_index, tensor_index, kwargs], ...]
        entries = [entry for entry in node if isinstance(entry, list) and entry and isinstance(entry[0], str)]
    for entry in entries:
        if len(entry) >= 3 and (entry[1] != 0 or entry[2] != 0):
            raise UnsupportedLayerError(f"{what}: layer '{name}' reads output {entry[2]} of call {entry[1]} of "
                                        f"'{entry[0]}'; bdscreen supports single-output layers called once.")
    return [str(entry[0]) for entry in entries]


def _endpoints(value: Any) -> list[str]:
    if not value:
        return []
    if isinstance(value[0], str):  # a single endpoint written flat: [name, 0, 0]
        return [value[0]]
    return [str(v[0]) for v in value]


def _input_shape(cfg: dict[str, Any], what: str) -> tuple[int, ...]:
    shape = cfg.get("batch_input_shape") or cfg.get("batch_shape")
    if not shape:
        raise UnreadableModelError(f"{what}: the model does not declare its input shape.")
    per_sample = shape[1:]
    if any(not isinstance(d, int) or d <= 0 for d in per_sample):
        raise UnsupportedLayerError(f"{what}: the input shape {per_sample} has unknown dimensions; bdscreen needs a "
                                    "fixed input size (set it with keras.Input(shape=...)).")
    check_elements(f"{what}: input", per_sample)
    return tuple(per_sample)


def _add_input(builder: GraphBuilder, first: KerasLayer, shape: tuple[int, ...], channels_last: bool) -> None:
    if len(shape) == 3 and channels_last:
        builder.add_input(first.name, "InputLayer", shape, ops.ToChannelsFirst(), (shape[2], shape[0], shape[1]))
    else:
        builder.add_input(first.name, "InputLayer", shape, ops.Identity(), shape)


def _weights_root(h5: h5py.File, what: str) -> h5py.Group:
    if "model_weights" in h5:
        return h5["model_weights"]
    if "layer_names" in h5.attrs:
        return h5
    raise UnreadableModelError(f"{what}: holds no Keras weights (no 'model_weights' group or 'layer_names').")


def _layer_datasets(root: h5py.Group, layer: str, where: str) -> dict[str, h5py.Dataset]:
    """A layer's weight datasets by short name ('kernel', 'bias', ...)."""
    if layer not in root:
        raise UnreadableModelError(f"{where}: the file has no weights for this layer "
                                   f"(it has weights for: {', '.join(sorted(root.keys()))[:300]}).")
    group = root[layer]
    names = [n.decode() if isinstance(n, bytes) else str(n) for n in group.attrs.get("weight_names", [])]
    if not names:
        names = []
        group.visit(lambda n: names.append(n) if isinstance(group[n], h5py.Dataset) else None)
    found = {}
    for n in names:
        if n not in group:
            raise UnreadableModelError(f"{where}: weight '{n}' is listed but missing from the file.")
        found[n.rsplit("/", 1)[-1].split(":")[0]] = group[n]
    return found


def _load_weights(module: torch.nn.Module, layer: KerasLayer, root: h5py.Group, where: str) -> None:
    maps = weight_maps(layer.class_name, module)
    if not maps:
        return
    stored = _layer_datasets(root, layer.name, where)
    params = dict(module.named_parameters()) | dict(module.named_buffers())
    for m in maps:
        if m.keras not in stored:
            raise UnreadableModelError(f"{where}: weight '{m.keras}' is missing (found: {', '.join(stored)}).")
        dataset = stored[m.keras]
        target = params[m.torch]
        expected = m.to_keras(np.broadcast_to(np.float32(0), tuple(target.shape))).shape
        if tuple(dataset.shape) != tuple(expected):
            raise UnreadableModelError(f"{where}: weight '{m.keras}' has shape {tuple(dataset.shape)} but the "
                                       f"layer config implies {tuple(expected)}.")
        if dataset.dtype.kind != "f":
            raise UnreadableModelError(f"{where}: weight '{m.keras}' has dtype {dataset.dtype}, not floating point.")
        value = m.to_torch(dataset[()])
        with torch.no_grad():
            target.copy_(torch.from_numpy(np.ascontiguousarray(value, dtype=np.float32)))
