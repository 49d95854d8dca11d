"""Rebuild the shipped MNIST litmus bank from seeds, in one command:

    .venv/bin/python -m worker.zoo.build_mnist_bank

Trains (or reads back from the zoo cache) 800 candidate models, 160 of each built-in family, on the first 3,000
images of the real MNIST test set in ``../shared/fixtures/mnist`` (the only MNIST images the project has), judges
them on its last 1,000, learns 10 litmus patterns on the training split, calibrates the threshold on the
validation split and measures the test split. Runs on one thread by default, because CPU results can differ in
the last bits with the number of threads, and a rebuild should give the same file.
"""

import argparse
import hashlib
import sys
import time
from pathlib import Path

import numpy as np
import torch

from worker.core.bankfiles import SHIPPED_BANKS, LitmusBank, save_bank
from worker.engine.data import read_mnist_idx
from worker.zoo.ulp_training import UlpSettings, train_ulp
from worker.zoo.zoo import Zoo, generate_zoo
from worker.zoo.zoo_spec import ZooSpec

ROOT = Path(__file__).resolve().parents[2]
FIXTURES = ROOT.parent / "shared" / "fixtures" / "mnist"
BANK_PATH = SHIPPED_BANKS / "mnist-28x28x1.h5"
MNIST_FILES = ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")

#: The shipped bank's zoo: the five CNN families and two trigger kinds it was built with (later families and kinds
#: are for the detection benchmark; naming these keeps the bank's zoo, and its cache key, as they were).
ULP_FAMILIES = ("cnn2-max", "cnn2-avg-bn", "cnn3-stride", "cnn1-bn", "lenet5")
MNIST_ZOO = ZooSpec(input_shape=(28, 28, 1), num_classes=10, families=ULP_FAMILIES, trigger_kinds=("patch", "blend"),
                    models_per_family=160, backdoored_fraction=0.6, train_images=3000, eval_images=1000,
                    group_size=40, seed=2020)
MNIST_ULP = UlpSettings(patterns=10, seed=2020)


def load_mnist(folder: Path = FIXTURES) -> tuple[np.ndarray, np.ndarray, dict]:
    """The MNIST fixture's images (N x 28 x 28 x 1, 0-255) and labels, with the files' digests for provenance."""
    images, labels = read_mnist_idx(folder / MNIST_FILES[0], folder / MNIST_FILES[1])
    digests = {name: hashlib.sha256((folder / name).read_bytes()).hexdigest() for name in MNIST_FILES}
    return images, labels, digests


def build_bank(spec: ZooSpec = MNIST_ZOO, settings: UlpSettings = MNIST_ULP, name: str = "mnist-28x28x1",
               fixtures: Path = FIXTURES, progress=print) -> tuple[LitmusBank, Zoo]:
    images, labels, digests = load_mnist(fixtures)
    zoo = generate_zoo(spec, images, labels, progress=progress)
    provenance = {"zoo": spec.to_json(), "data": {"source": "MNIST t10k (fixtures/mnist)", "sha256": digests},
                  **zoo.summary(),
                  "command": ".venv/bin/python -m worker.zoo.build_mnist_bank"}
    bank = train_ulp(zoo.members(("train",)), zoo.members(("val",)), spec.input_shape, spec.num_classes, settings,
                     name=name, test=zoo.members(("test",)), provenance=provenance)
    return bank, zoo


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--fixtures", type=Path, default=FIXTURES, help="folder with the MNIST idx files")
    parser.add_argument("--out", type=Path, default=BANK_PATH)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    bank, zoo = build_bank(fixtures=args.fixtures, progress=lambda m: print(f"[{time.perf_counter() - start:6.0f} s] "
                                                                            f"{m}", flush=True))
    save_bank(bank, args.out)
    print(f"wrote {args.out} ({args.out.stat().st_size:,} bytes) in {time.perf_counter() - start:.0f} s: "
          f"{bank.describe()}")
    print(f"zoo {zoo.key}: {zoo.summary()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
