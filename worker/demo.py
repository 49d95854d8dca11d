"""The README's first command: build the project's MNIST BadNet and scan it locally, end to end.

    python -m worker.demo [--out DIR]

The BadNet is trained from the real MNIST fixture (cached under $BDSCREEN_CACHE after the first run);
the scan repairs it by fine-pruning and builds GoodNets, exactly as ``bdscreen scan --local`` would.
"""

import argparse
import sys
from pathlib import Path

from cli.main import main as cli_main
from worker.badnet import mnist_badnet

FIXTURES = Path(__file__).resolve().parents[1].parent / "shared" / "fixtures"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="out/demo", help="where the artifacts go (default out/demo)")
    parser.add_argument("--fixtures", type=Path, default=FIXTURES)
    args = parser.parse_args()
    print("building the MNIST BadNet from the real t10k images (cached after the first run)...", file=sys.stderr)
    case = mnist_badnet(args.fixtures)
    print(f"BadNet: clean accuracy {case.meta['clean_accuracy']:.2%}, attack success "
          f"{case.meta['attack_success_rate']:.2%} ({case.meta['trigger']} -> class {case.meta['target']})",
          file=sys.stderr)
    command = ["scan", str(case.model), "--clean-data", str(case.clean), "--eval-data", str(case.evaluation),
               "--poisoned-data", str(case.poisoned), "--divide-by", "255", "--fine-tune", "--out", args.out]
    print("bdscreen " + " ".join(command), file=sys.stderr)
    code = cli_main(command)
    return 0 if code in (0, 1, 3) else code


if __name__ == "__main__":
    sys.exit(main())
