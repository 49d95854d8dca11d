"""The ``bdscreen`` command line.

Exit codes: 0 success, 2 refused or unreadable input (the reason on stderr). The engine is imported
inside each command so that ``bdscreen --help`` stays fast and the CI client needs no torch.
"""

import argparse
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from cli.banks import add_banks_parser
from cli.keys import add_keys_parser
from cli.scan import add_scan_parser
from cli.serve import add_service_parsers
from schemas.models import InspectReport

EXIT_OK = 0
EXIT_INPUT_ERROR = 2


def _existing_file(value: str) -> Path:
    path = Path(value)
    if not path.is_file():
        raise argparse.ArgumentTypeError(f"no such file: {value}")
    return path


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="bdscreen", description="Screen image classifiers for backdoors.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    inspect = commands.add_parser("inspect", help="describe a model file, or say why it is refused")
    inspect.add_argument("model", type=_existing_file, metavar="MODEL")
    inspect.add_argument("--architecture", type=_existing_file, metavar="JSON",
                         help="Keras model JSON (model.to_json()) for a weights-only .h5 file")
    inspect.add_argument("--json", action="store_true", help="print one JSON object")
    inspect.set_defaults(run=_inspect)

    convert = commands.add_parser("convert", help="convert a model to ONNX (no TensorFlow needed)")
    convert.add_argument("model", type=_existing_file, metavar="MODEL")
    convert.add_argument("--architecture", type=_existing_file, metavar="JSON")
    convert.add_argument("--to", choices=["onnx"], default="onnx")
    convert.add_argument("-o", "--output", type=Path, required=True, metavar="OUT.onnx")
    convert.set_defaults(run=_convert)

    add_scan_parser(commands, _existing_file)
    add_service_parsers(commands)
    add_keys_parser(commands)
    add_banks_parser(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    run: Callable[[argparse.Namespace], int] = args.run
    from worker.core.errors import InputError

    try:
        return run(args)
    except InputError as exc:
        print(f"bdscreen: {exc.category.value}: {exc.message}", file=sys.stderr)
        return EXIT_INPUT_ERROR


def _inspect(args: argparse.Namespace) -> int:
    from worker.core.errors import InputError
    from worker.engine.formats import read_model

    try:
        signature = read_model(args.model, args.architecture).signature
        report = InspectReport(path=str(args.model), accepted=True, signature=signature)
    except InputError as exc:
        report = InspectReport(path=str(args.model), accepted=False, refused_category=exc.category.value,
                               refused_reason=exc.message)
    if args.json:
        print(report.model_dump_json(indent=2))
    elif report.signature is not None:
        print(_describe(report))
    if not report.accepted:
        print(f"bdscreen: {report.refused_category}: {report.refused_reason}", file=sys.stderr)
        return EXIT_INPUT_ERROR
    return EXIT_OK


def _describe(report: InspectReport) -> str:
    sig = report.signature
    lines = [
        f"file:        {report.path}",
        f"format:      {sig.format.value} ({sig.producer})",
        f"input:       {sig.input_name} {sig.input_shape} ({sig.input_layout.value})",
        f"classes:     {sig.num_classes} (output: {sig.output_activation or 'logits'})",
        f"parameters:  {sig.parameters:,}",
        "",
        f"{'layer':<24} {'kind':<24} {'output shape':<18} {'channels':>8}  inputs",
    ]
    for layer in sig.layers:
        channels = "" if layer.channels is None else str(layer.channels)
        lines.append(f"{layer.name:<24} {layer.kind:<24} {str(layer.output_shape):<18} {channels:>8}  "
                     f"{', '.join(layer.inputs)}")
    return "\n".join(lines)


def _convert(args: argparse.Namespace) -> int:
    import hashlib

    import numpy as np
    import torch

    from worker.core.limits import batch_within_budget
    from worker.engine.canonical import predict
    from worker.engine.formats import read_model
    from worker.engine.formats.onnx_export import export_onnx, run_onnx

    model = read_model(args.model, args.architecture)
    export_onnx(model, args.output)
    # Check the export before claiming success: the same random batch through both.
    x = np.random.default_rng(0).uniform(0, 1, (8, *model.signature.input_shape)).astype(np.float32)
    batch = batch_within_budget(model.sample_bytes, len(x))  # a model's activations can be large
    reference = predict(model, torch.from_numpy(x), batch_size=batch).numpy()
    diff = float(np.abs(run_onnx(args.output, x, batch_size=batch) - reference).max())
    digest = hashlib.sha256(args.output.read_bytes()).hexdigest()
    print(f"wrote {args.output} ({args.output.stat().st_size:,} bytes, sha256 {digest[:16]}...); "
          f"max |onnxruntime - canonical| on 8 random inputs: {diff:.2e}")
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
