"""``bdscreen scan``: screen, repair and wrap a model, here (``--local``) or on a server (``--server``).

Exit codes, for CI gates: 0 clean, 1 backdoored, 3 inconclusive, 2 refused or bad input.
"""

import argparse
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cli.report import describe_report, exit_code
from schemas.scan import GoodNetRule, PruneCriterion, RepairMethod, ScanOptions


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
    # No defaults here: an unset flag leaves the option to schemas/scan.py, the only place defaults live.
    prep = scan.add_argument_group("preprocessing: x -> (x / divide_by - mean) / std")
    prep.add_argument("--divide-by", type=float, help="(default 1)")
    prep.add_argument("--mean", type=_floats, help="one value or one per channel (default 0)")
    prep.add_argument("--std", type=_floats, help="one value or one per channel (default 1)")
    prep.add_argument("--bgr", action="store_const", const=True, help="reverse channel order (RGB data, BGR model)")
    repair = scan.add_argument_group("repair")
    repair.add_argument("--no-repair", action="store_const", const=True,
                        help="detection only, even when clean data is given (the detectors still use it)")
    repair.add_argument("--layer", help="conv layer to prune (default: the last conv layer on every path "
                                        "to the output)")
    repair.add_argument("--criterion", choices=[c.value for c in PruneCriterion], help="(default mean)")
    repair.add_argument("--thresholds", type=_floats, help="clean-accuracy drops in percentage points (default 2,4,10)")
    repair.add_argument("--repair-method", choices=[m.value for m in RepairMethod],
                        help="auto (default): unlearn the reversed trigger, with and without pruning, and recommend "
                             "the best on clean data; unlearn; adversarial (label-agnostic); prune (the seed's)")
    repair.add_argument("--fine-tune", action="store_const", const=True,
                        help="also fine-tune every pruned model (fine-pruning)")
    repair.add_argument("--fine-tune-epochs", type=int, help="(default 10)")
    repair.add_argument("--fine-tune-lr", type=float,
                        help="peak learning rate (cosine to 0); default: found for the model by short trials")
    repair.add_argument("--max-accuracy-drop", type=float,
                        help="points of clean accuracy a recommended repair may lose (default 1)")
    repair.add_argument("--goodnet-rule", choices=[r.value for r in GoodNetRule],
                        help="targets (default): flag disagreements where the original answers a suspected target; "
                             "disagree: flag every disagreement (the seed's rule)")
    repair.add_argument("--holdout", type=float, help="held-out fraction of --clean-data (default 0.3)")
    repair.add_argument("--no-goodnet", action="store_const", const=True, help="do not build GoodNets")
    repair.add_argument("--seed", type=int)
    scan.add_argument("--detectors", help="comma-separated detectors, or 'none' (default: every applicable one)")
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


#: Each scan flag and the option it sets (a path into ScanOptions), with how a flag value becomes the option's.
FLAG_OPTIONS: dict[str, tuple[tuple[str, ...], Callable[[Any], Any]]] = {
    "divide_by": (("preprocessing", "divide_by"), lambda v: v),
    "mean": (("preprocessing", "mean"), lambda v: v),
    "std": (("preprocessing", "std"), lambda v: v),
    "bgr": (("preprocessing", "bgr"), lambda v: v),
    "no_repair": (("repair", "enabled"), lambda v: not v),
    "layer": (("repair", "layer"), lambda v: v),
    "criterion": (("repair", "criterion"), lambda v: v),
    "thresholds": (("repair", "thresholds"), lambda v: v),
    "repair_method": (("repair", "method"), lambda v: v),
    "max_accuracy_drop": (("repair", "max_accuracy_drop"), lambda v: v),
    "goodnet_rule": (("repair", "goodnet_rule"), lambda v: v),
    "fine_tune": (("repair", "fine_tune"), lambda v: v),
    "fine_tune_epochs": (("repair", "fine_tune_epochs"), lambda v: v),
    "fine_tune_lr": (("repair", "fine_tune_learning_rate"), lambda v: v),
    "holdout": (("repair", "holdout_fraction"), lambda v: v),
    "seed": (("repair", "seed"), lambda v: v),
    "no_goodnet": (("goodnet",), lambda v: not v),
    "detectors": (("detectors",), lambda v: [] if v.strip() in ("", "none") else [d.strip() for d in v.split(",")]),
}


def options_from_args(args: argparse.Namespace) -> ScanOptions:
    """The scan options holding only what the user set on the command line; the schema fills in the rest."""
    from pydantic import ValidationError

    from worker.core.errors import OptionError

    given: dict[str, Any] = {}
    for flag, (path, convert) in FLAG_OPTIONS.items():
        value = getattr(args, flag, None)
        if value is not None:
            *parents, leaf = path
            target = given
            for parent in parents:
                target = target.setdefault(parent, {})
            target[leaf] = convert(value)
    try:
        return ScanOptions.model_validate(given)
    except ValidationError as exc:
        first = exc.errors()[0]
        loc = tuple(str(part) for part in first["loc"])
        flag = next((f for f, (path, _) in FLAG_OPTIONS.items() if loc[:len(path)] == path), None)
        where = f"--{flag.replace('_', '-')}" if flag else ".".join(loc)
        raise OptionError(f"{where}: {first['msg']}") from None


def check_requested_work(args: argparse.Namespace) -> None:
    """Refuse repair flags, --eval-data and --poisoned-data without --clean-data (exit 2), rather than drop them."""
    from worker.core.errors import OptionError

    if args.clean_data is not None:
        return
    given = [f"--{flag.replace('_', '-')}" for flag, (path, _) in FLAG_OPTIONS.items()
             if path[0] == "repair" and flag != "no_repair" and getattr(args, flag, None) is not None]
    given += [flag for flag, value in (("--eval-data", args.eval_data), ("--poisoned-data", args.poisoned_data))
              if value is not None]
    if given:
        raise OptionError(f"{', '.join(given)} given without --clean-data: repair needs clean labelled samples. "
                          "Add --clean-data FILE, or leave these out for detection only.")


def run_scan_command(args: argparse.Namespace) -> int:
    check_requested_work(args)
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
            report = run_scan(inputs, options, Path(tmp), progress, strict_detectors=args.detectors is not None)
    else:
        report = run_scan(inputs, options, args.out, progress, strict_detectors=args.detectors is not None)
    if args.json:
        print(report.model_dump_json(indent=2))
    else:
        print(describe_report(report, args.out))
    return exit_code(report)


def _print_progress(stage: str, fraction: float) -> None:
    print(f"  [{fraction:4.0%}] {stage}", file=sys.stderr)
