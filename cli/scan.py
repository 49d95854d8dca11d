"""``bdscreen scan``: screen, repair and wrap a model, here (``--local``) or on a server (``--server``).

Exit codes, for CI gates: 0 clean, 1 backdoored, 3 inconclusive, 2 refused or bad input.
"""

import argparse
import sys
import tempfile
from pathlib import Path

from cli.report import describe_report, exit_code
from schemas.scan import DetectorName, PreprocessingOptions, PruneCriterion, RepairOptions, ScanOptions


def _floats(value: str) -> list[float]:
    try:
        return [float(v) for v in value.replace(",", " ").split()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected numbers separated by commas, got '{value}'") from None


def add_scan_parser(commands: argparse._SubParsersAction, existing_file) -> None:
    scan = commands.add_parser("scan", help="screen a model for backdoors, repair it and build GoodNets",
                               description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    scan.add_argument("model", type=existing_file, metavar="MODEL")
    scan.add_argument("--architecture", type=existing_file, metavar="JSON")
    data = scan.add_argument_group("data (raw values; scaling is declared below)")
    data.add_argument("--clean-data", type=existing_file, metavar="FILE",
                      help="clean labelled data (HDF5 data/label or NPZ x/y); enables repair")
    data.add_argument("--eval-data", type=existing_file, metavar="FILE",
                      help="separate clean data for the reported figures (else part of --clean-data is held out)")
    data.add_argument("--poisoned-data", type=existing_file, metavar="FILE",
                      help="triggered inputs with their poisoned labels, only to report attack success")
    prep = scan.add_argument_group("preprocessing: x -> (x / divide_by - mean) / std")
    prep.add_argument("--divide-by", type=float, default=1.0)
    prep.add_argument("--mean", type=_floats, default=[0.0], help="one value or one per channel")
    prep.add_argument("--std", type=_floats, default=[1.0], help="one value or one per channel")
    prep.add_argument("--bgr", action="store_true", help="reverse channel order (RGB data, BGR model)")
    repair = scan.add_argument_group("repair")
    repair.add_argument("--layer", help="conv layer to prune (default: the last conv layer on every path "
                                        "to the output)")
    repair.add_argument("--criterion", choices=[c.value for c in PruneCriterion], default="mean")
    repair.add_argument("--thresholds", type=_floats, default=[2.0, 4.0, 10.0],
                        help="clean-accuracy drops in percentage points (default 2,4,10)")
    repair.add_argument("--fine-tune", action="store_true", help="fine-tune after pruning (fine-pruning)")
    repair.add_argument("--fine-tune-epochs", type=int, default=20)
    repair.add_argument("--fine-tune-lr", type=float, default=1e-2, help="peak learning rate (cosine to 0)")
    repair.add_argument("--holdout", type=float, default=0.3, help="held-out fraction of --clean-data")
    repair.add_argument("--no-goodnet", action="store_true", help="do not build GoodNets")
    repair.add_argument("--seed", type=int, default=0)
    scan.add_argument("--detectors", default=None,
                      help=f"comma-separated detectors ({', '.join(DetectorName)}), or 'none' (default: all of them; "
                           "each runs where it applies)")
    repair.add_argument("--no-repair", action="store_true", help="detection only, even when clean data is given "
                                                                 "(the detectors still use it)")
    where = scan.add_mutually_exclusive_group()
    where.add_argument("--local", action="store_true", help="run the engine in this process (the default)")
    where.add_argument("--server", metavar="URL", help="scan on a bdscreen server (http://HOST:PORT) instead")
    remote = scan.add_argument_group("remote scan (--server)")
    remote.add_argument("--api-key", metavar="KEY", help="API key (default: $BDSCREEN_API_KEY)")
    remote.add_argument("--download", type=Path, metavar="DIR", help="download the artifacts and report.json")
    remote.add_argument("--callback-url", metavar="URL", help="the server POSTs the signed summary here at the end")
    out = scan.add_argument_group("output")
    out.add_argument("--json", action="store_true", help="print the report as one JSON object")
    out.add_argument("--out", type=Path, metavar="DIR", help="where artifacts and report.json go "
                                                             "(default: a temporary folder, removed after)")
    scan.set_defaults(run=run_scan_command)


def options_from_args(args: argparse.Namespace) -> ScanOptions:
    from pydantic import ValidationError

    from worker.core.errors import OptionError

    chosen: dict = {}
    if args.detectors is not None:
        names = [] if args.detectors.strip() in ("", "none") else [d.strip() for d in args.detectors.split(",")]
        unknown = [n for n in names if n not in {d.value for d in DetectorName}]
        if unknown:
            raise OptionError(f"--detectors: unknown detector {', '.join(unknown)} "
                              f"(known: {', '.join(DetectorName)}, or 'none').")
        chosen["detectors"] = [DetectorName(n) for n in names]
    try:
        return ScanOptions(
            preprocessing=PreprocessingOptions(divide_by=args.divide_by, mean=args.mean, std=args.std, bgr=args.bgr),
            **chosen,
            repair=RepairOptions(enabled=not args.no_repair, layer=args.layer, criterion=args.criterion,
                                 thresholds=args.thresholds,
                                 fine_tune=args.fine_tune, fine_tune_epochs=args.fine_tune_epochs,
                                 fine_tune_learning_rate=args.fine_tune_lr,
                                 holdout_fraction=args.holdout, seed=args.seed),
            goodnet=not args.no_goodnet)
    except (ValidationError, ValueError) as exc:
        raise OptionError(f"invalid option: {_first_error(exc)}") from None


def _first_error(exc: Exception) -> str:
    errors = getattr(exc, "errors", None)
    if callable(errors):
        first = errors()[0]
        return f"{'.'.join(str(p) for p in first['loc'])}: {first['msg']}"
    return str(exc)


def run_scan_command(args: argparse.Namespace) -> int:
    options = options_from_args(args)
    if args.server:
        from cli.client import run_remote_scan

        return run_remote_scan(args, options)
    if args.download or args.api_key or args.callback_url:
        from worker.core.errors import OptionError

        raise OptionError("--download, --api-key and --callback-url need --server URL; a local scan writes to --out.")
    from worker.engine.scan import run_scan
    from worker.engine.stages import ScanInputs

    inputs = ScanInputs(model=args.model, architecture=args.architecture, clean_data=args.clean_data,
                        eval_data=args.eval_data, poisoned_data=args.poisoned_data)
    progress = None if args.json else _print_progress
    if args.out is None:
        with tempfile.TemporaryDirectory(prefix="bdscreen-") as tmp:
            report = run_scan(inputs, options, Path(tmp), progress)
    else:
        report = run_scan(inputs, options, args.out, progress)
    if args.json:
        print(report.model_dump_json(indent=2))
    else:
        print(describe_report(report, args.out))
    return exit_code(report)


def _print_progress(stage: str, fraction: float) -> None:
    print(f"  [{fraction:4.0%}] {stage}", file=sys.stderr)
