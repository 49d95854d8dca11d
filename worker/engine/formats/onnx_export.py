"""Write a :class:`CanonicalModel` as ONNX, and run ONNX files with onnxruntime.

The export uses torch's TorchScript-based exporter (``dynamo=False``): it needs no extra package
and writes one self-contained file with a dynamic batch axis, named ``input`` and ``output``.
"""

import pathlib
import warnings

import numpy as np
import onnxruntime as ort
import torch

from worker.engine.canonical import CanonicalModel

INPUT_NAME, OUTPUT_NAME = "input", "output"


def export_onnx(model: CanonicalModel, path: pathlib.Path, opset: int = 17) -> None:
    """Write ``model`` to ``path`` as one ONNX file taking a batch in the model's own input layout."""
    export_module(model, tuple(model.signature.input_shape), path, [OUTPUT_NAME], opset)


def export_module(module: torch.nn.Module, input_shape: tuple[int, ...], path: pathlib.Path,
                  output_names: list[str], opset: int = 17) -> None:
    """Write any eval-mode module over canonical models (a model, a GoodNet) as one ONNX file."""
    parameter = next(module.parameters(), None)
    device = parameter.device if parameter is not None else torch.device("cpu")
    example = torch.zeros((1, *input_shape), dtype=torch.float32, device=device)
    try:
        with warnings.catch_warnings():
            # The TorchScript exporter warns that it is deprecated (it is chosen on purpose, see above)
            # and that it cannot fold the reversed Slice of its own Pad export; neither needs action.
            warnings.simplefilter("ignore", category=DeprecationWarning)
            warnings.filterwarnings("ignore", message="Constant folding - Only steps=1", category=UserWarning)
            torch.onnx.export(
                module, (example,), str(path), dynamo=False, opset_version=opset, export_params=True,
                do_constant_folding=True, input_names=[INPUT_NAME], output_names=output_names,
                dynamic_axes={name: {0: "batch"} for name in [INPUT_NAME, *output_names]},
            )
    finally:
        module.eval()  # the exporter switches modes while tracing; a canonical model is always in eval mode


def onnx_session(path: pathlib.Path) -> ort.InferenceSession:
    """An onnxruntime session on the GPU when onnxruntime-gpu sees one, else on the CPU."""
    providers = ["CPUExecutionProvider"]
    if "CUDAExecutionProvider" in ort.get_available_providers():
        providers.insert(0, "CUDAExecutionProvider")
    return ort.InferenceSession(str(path), providers=providers)


def run_onnx(model: pathlib.Path | ort.InferenceSession, x: np.ndarray, batch_size: int = 1024) -> np.ndarray:
    """The outputs of an ONNX model (a file or a session) for the whole array ``x``, in float32 batches."""
    session = model if isinstance(model, ort.InferenceSession) else onnx_session(pathlib.Path(model))
    input_name = session.get_inputs()[0].name
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    outputs = [
        session.run(None, {input_name: np.ascontiguousarray(x[start:start + batch_size], dtype=np.float32)})[0]
        for start in range(0, len(x), batch_size)
    ]
    if outputs:
        return np.concatenate(outputs)
    declared = session.get_outputs()[0].shape[1:]
    return np.empty((0, *(d if isinstance(d, int) else 0 for d in declared)), dtype=np.float32)
