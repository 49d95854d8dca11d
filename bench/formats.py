"""Reading and running real models: bdscreen's readers against baselines, in one run.

    .venv/bin/python -m bench.formats [--repeats 5] [--inputs 11547]

Reading ``ytf/sunglasses_bd_net.h5``: our h5py reader against Keras 3 (torch backend) loading the same
file, when Keras is installed (it is in the ``test`` extra). Forward pass over 11,547 inputs of
55x47x3 (the size of the NYU lab's validation set; random pixels, since only time is measured): the
canonical torch module against onnxruntime running its ONNX export. Prints one table; ratios are
baseline time / our time, so above 1 means bdscreen is faster.
"""

import argparse
import os
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from bench import FIXTURES, timed
from worker.engine.canonical import default_device, predict
from worker.engine.formats import read_model
from worker.engine.formats.onnx_export import export_onnx, onnx_session, run_onnx


def keras_loader() -> Callable[[Path], object] | None:
    os.environ.setdefault("KERAS_BACKEND", "torch")
    try:
        import keras
    except ImportError:
        return None
    return lambda path: keras.saving.load_model(path, compile=False, safe_mode=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--inputs", type=int, default=11_547)
    args = parser.parse_args()
    model_path = FIXTURES / "ytf" / "sunglasses_bd_net.h5"
    rows: list[tuple[str, str, float, str, str]] = []

    ours = timed(lambda: read_model(model_path), args.repeats)
    load_keras = keras_loader()
    if load_keras is not None:
        base = timed(lambda: load_keras(model_path), args.repeats)
        rows.append(("read sunglasses_bd_net.h5", "bdscreen h5py reader", ours * 1e3, "ms",
                     f"{base / ours:.1f}x vs Keras 3 load_model ({base * 1e3:.0f} ms)"))
    else:
        rows.append(("read sunglasses_bd_net.h5", "bdscreen h5py reader", ours * 1e3, "ms", "(keras not installed)"))

    model = read_model(model_path).to(default_device())
    x = np.random.default_rng(0).uniform(0, 1, (args.inputs, 55, 47, 3)).astype(np.float32)
    xt = torch.from_numpy(x)
    torch_time = timed(lambda: predict(model, xt, batch_size=1024), args.repeats)
    with tempfile.TemporaryDirectory() as tmp:
        onnx_path = Path(tmp) / "model.onnx"
        export_time = timed(lambda: export_onnx(model, onnx_path), 1)
        session = onnx_session(onnx_path)
        ort_time = timed(lambda: run_onnx(session, x, batch_size=1024), args.repeats)
        diff = float(np.abs(run_onnx(session, x[:512]) - predict(model, xt[:512]).numpy()).max())
    device = str(default_device())
    rows.append((f"forward {args.inputs} x 55x47x3", f"canonical torch ({device})", torch_time, "s",
                 f"{args.inputs / torch_time:,.0f} img/s"))
    rows.append((f"forward {args.inputs} x 55x47x3", "onnxruntime (export)", ort_time, "s",
                 f"{args.inputs / ort_time:,.0f} img/s; {torch_time / ort_time:.2f}x vs torch; max diff {diff:.1e}"))
    rows.append(("export to ONNX", "torch.onnx.export (dynamo=False)", export_time * 1e3, "ms", ""))

    print(f"bench.formats: torch {torch.__version__}, {torch.get_num_threads()} threads, median of {args.repeats}")
    print(f"{'task':<28} {'implementation':<34} {'time':>10}  note")
    for task, impl, value, unit, note in rows:
        print(f"{task:<28} {impl:<34} {value:>8.2f} {unit:<2} {note}")


if __name__ == "__main__":
    main()
