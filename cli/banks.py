"""``bdscreen banks``: list the litmus banks the ULP detector can use, or train one for a new task.

Exit codes as everywhere in the CLI: 0 success, 2 refused input (the reason on stderr). ``banks list`` exits 2
when a bank file in a searched folder is refused, after listing the others.
"""

import argparse
import json
import math
import sys
from pathlib import Path

EXIT_OK = 0
EXIT_INPUT_ERROR = 2
DEFAULT_FAMILIES = ("cnn2-max", "cnn2-avg-bn", "cnn3-stride", "cnn1-bn", "lenet5")


def add_banks_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register ``banks list`` and ``banks train`` under the CLI's subcommands."""
    banks = subparsers.add_parser("banks", help="list or train litmus banks for the ULP detector")
    actions = banks.add_subparsers(dest="banks_action", required=True, metavar="ACTION")

    listing = actions.add_parser("list", help="list the banks found (shipped and in $BDSCREEN_BANKS)")
    listing.add_argument("--json", action="store_true", help="print one JSON object")
    listing.set_defaults(run=_list)

    train = actions.add_parser("train", help="train a bank on a zoo of models made from labelled images")
    train.add_argument("--data", type=Path, required=True, metavar="FILE",
                       help="raw 0-255 images: HDF5 ('data'/'label' or 'x'/'y'), NPZ ('x', 'y'), or MNIST idx "
                            "images (.gz) with --labels")
    train.add_argument("--labels", type=Path, metavar="FILE", help="idx labels (.gz) when --data is idx images")
    train.add_argument("--out", type=Path, required=True, metavar="BANK", help="bank file to write (.h5)")
    train.add_argument("--input-shape", metavar="HxWxC", help="image size of HDF5/NPZ data, e.g. 32x32x3")
    train.add_argument("--classes", type=int, required=True, help="number of classes of the task")
    train.add_argument("--families", nargs="+", default=list(DEFAULT_FAMILIES), metavar="FAMILY",
                       help=f"architecture families (default: {' '.join(DEFAULT_FAMILIES)}; 'own' needs --model)")
    train.add_argument("--model", type=Path, metavar="MODEL", help="model whose architecture the 'own' family uses")
    train.add_argument("--trigger-kinds", nargs="+", default=["patch", "blend"], metavar="KIND")
    train.add_argument("--models", type=int, default=200, help="candidate zoo models in all (default 200)")
    train.add_argument("--patterns", type=int, default=10, help="litmus patterns M (default 10)")
    train.add_argument("--epochs", type=int, default=4, help="training epochs of each zoo model (default 4)")
    train.add_argument("--ulp-epochs", type=int, default=60, help="ULP training epochs (default 60)")
    train.add_argument("--train-images", type=int, default=3000, help="images each zoo model trains on")
    train.add_argument("--eval-images", type=int, default=1000, help="last images, for accuracy and attack success")
    train.add_argument("--target-fpr", type=float, default=0.05, help="false-positive rate of the threshold")
    train.add_argument("--min-attack-success", type=float, default=0.9,
                       help="backdoored zoo models whose attack succeeds less often are dropped (default 0.9)")
    train.add_argument("--max-accuracy-gap", type=float, default=0.05,
                       help="zoo models this far below their family's clean accuracy are dropped (default 0.05)")
    train.add_argument("--seed", type=int, default=0)
    train.add_argument("--name", help="bank name (default: the output file's stem)")
    train.set_defaults(run=_train)


def _list(args: argparse.Namespace) -> int:
    from worker.core.bankfiles import bank_folders, find_banks

    listing = find_banks()
    rows = [{"name": bank.name, "path": str(path), "input_shape": list(bank.input_shape),
             "num_classes": bank.num_classes, "patterns": len(bank.patterns), "threshold": bank.threshold,
             "target_fpr": bank.target_fpr, "validation_auc": bank.validation_auc, "test_auc": bank.test_auc,
             "families": bank.provenance.get("zoo", {}).get("families", []),
             # the ULP finding says whether a model is like one of these (None: not recorded)
             "architectures": bank.provenance.get("architectures")} for path, bank in listing.banks]
    refused = [{"path": str(path), "reason": reason} for path, reason in listing.refused]
    if args.json:
        print(json.dumps({"folders": [str(f) for f in bank_folders()], "banks": rows, "refused": refused}, indent=2))
    else:
        print(f"{'name':<24} {'input':<10} {'classes':>7} {'M':>3} {'test AUC':>8} {'threshold':>9}  path")
        for row in rows:
            test = "n/a" if row["test_auc"] is None else f"{row['test_auc']:.3f}"
            shape = "x".join(map(str, row["input_shape"]))
            print(f"{row['name']:<24} {shape:<10} {row['num_classes']:>7} {row['patterns']:>3} {test:>8} "
                  f"{row['threshold']:>9.3f}  {row['path']}")
    for item in refused:
        print(f"bdscreen: bad-data: refused litmus bank {item['path']}: {item['reason']}", file=sys.stderr)
    return EXIT_INPUT_ERROR if refused else EXIT_OK


def _train(args: argparse.Namespace) -> int:
    from worker.core.bankfiles import save_bank
    from worker.core.errors import OptionError
    from worker.zoo.batched import TrainingSettings
    from worker.zoo.ulp_training import UlpSettings, train_ulp
    from worker.zoo.zoo import generate_zoo
    from worker.zoo.zoo_spec import ZooSpec

    if not args.out.parent.is_dir():
        raise OptionError(f"--out: folder {args.out.parent} does not exist.")
    if args.models < 10:
        raise OptionError(f"--models must be at least 10 (got {args.models}): the zoo needs clean and backdoored "
                          "models in each split.")
    images, labels = _read_images(args)
    own = _own_model(args)
    spec = ZooSpec(input_shape=tuple(int(d) for d in images.shape[1:]), num_classes=args.classes,
                   families=tuple(args.families), models_per_family=math.ceil(args.models / len(args.families)),
                   trigger_kinds=tuple(args.trigger_kinds), train_images=args.train_images,
                   eval_images=args.eval_images, training=TrainingSettings(epochs=args.epochs),
                   min_attack_success=args.min_attack_success, max_accuracy_gap=args.max_accuracy_gap, seed=args.seed)
    settings = UlpSettings(patterns=args.patterns, epochs=args.ulp_epochs, target_fpr=args.target_fpr, seed=args.seed)
    zoo = generate_zoo(spec, images, labels, own_model=own, progress=lambda m: print(m, file=sys.stderr))
    name = args.name or args.out.stem
    provenance = {"zoo": spec.to_json(), "data": {"source": args.data.name}, **zoo.summary(),
                  "command": "bdscreen " + " ".join(sys.argv[1:])}
    bank = train_ulp(zoo.members(("train",)), zoo.members(("val",)), spec.input_shape, spec.num_classes, settings,
                     name=name, test=zoo.members(("test",)) or None, provenance=provenance)
    save_bank(bank, args.out)
    print(f"wrote {args.out}: {bank.describe()}")
    return EXIT_OK


def _read_images(args: argparse.Namespace):
    import numpy as np

    from schemas.models import InputLayout, ModelFormat, ModelSignature
    from worker.core.errors import DataError, OptionError
    from worker.engine.data import read_dataset, read_mnist_idx

    if not args.data.is_file():
        raise DataError(f"--data: no such file: {args.data}.")
    if args.classes < 2:
        raise OptionError(f"--classes must be at least 2 (got {args.classes}).")
    if args.labels is not None:
        if not args.labels.is_file():
            raise DataError(f"--labels: no such file: {args.labels}.")
        images, labels = read_mnist_idx(args.data, args.labels)
        if labels.max() >= args.classes:
            raise DataError(f"the labels go up to {labels.max()} but --classes is {args.classes}.")
    else:
        shape = _parse_shape(args.input_shape)
        # The data readers check samples against a model's contract; here the contract is the declared task.
        task = ModelSignature(format=ModelFormat.onnx, input_name="images", input_shape=list(shape),
                              input_layout=InputLayout.nhwc, num_classes=args.classes, layers=[])
        dataset = read_dataset(args.data, task)
        images, labels = dataset.x, dataset.y
    if float(np.max(images)) <= 1.0:
        raise DataError("the images' values are all within [0, 1]; banks train needs raw pixels (0-255), because "
                        "litmus patterns live in raw pixel space and each model's scaling is applied after them.")
    return images, labels


def _parse_shape(text: str | None) -> tuple[int, int, int]:
    from worker.core.errors import OptionError

    if text is None:
        raise OptionError("--input-shape HxWxC is needed for HDF5 and NPZ data (for example 28x28x1).")
    try:
        shape = tuple(int(part) for part in text.lower().split("x"))
    except ValueError:
        shape = ()
    if len(shape) != 3 or min(shape) < 1 or shape[2] not in (1, 3):
        raise OptionError(f"--input-shape must be HxWxC with 1 or 3 channels, like 28x28x1 (got '{text}').")
    return shape


def _own_model(args: argparse.Namespace):
    from worker.core.errors import OptionError
    from worker.engine.formats import read_model
    from worker.zoo.architectures import OWN_ARCHITECTURE

    if OWN_ARCHITECTURE not in args.families:
        if args.model is not None:
            raise OptionError(f"--model is only used with the '{OWN_ARCHITECTURE}' family; add it to --families.")
        return None
    if args.model is None or not args.model.is_file():
        raise OptionError(f"the '{OWN_ARCHITECTURE}' family needs --model MODEL (an existing model file).")
    return read_model(args.model)
