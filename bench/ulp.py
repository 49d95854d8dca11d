"""ULP detection on MNIST: AUCs, detection latency, zoo training throughput and a real BadNet's scan, in one run.

    .venv/bin/python -m bench.ulp [--threads 1] [--repeats 30] [--throughput-models 16]

AUCs (M = 10): the shipped bank on its zoo's test split and on a fresh zoo (another seed) that saw no choice;
then a bank trained here on the same zoo without the lenet5 family and without blended triggers (patch-backdoored
and clean models of the other four families), measured on every lenet5 model (a family held out of training) and
on blended-trigger models of the other families against their clean test-split models (a trigger kind held out of
training). The zoos come from the cache that ``python -m worker.zoo.build_mnist_bank`` fills (built here first
if missing: long).
A control for that scan: the scanned model's own architecture re-initialised and trained here clean and with
patch backdoors, and the fraction of each that the shipped bank flags.
Latency: scoring ``csaw_c_clean_label_bd_net.h5`` with one batched forward pass of the patterns against feeding
them one at a time (median ms). Throughput: the zoo's training settings for the same models trained batched and
one after another, models per minute. Threads default to 1: on the project's 2 shared cores two threads ran
training five times slower, not faster.
"""

import argparse
import dataclasses
import time
from collections.abc import Callable

import numpy as np
import torch

from bench import FIXTURES, timed
from schemas.models import InputLayout
from schemas.report import verdict_of
from worker.core.bankfiles import load_bank
from worker.engine.canonical import default_device
from worker.engine.detect.ulp import detect_ulp, litmus_features
from worker.engine.formats import read_model
from worker.engine.preprocess import Preprocessing
from worker.zoo.architectures import OWN_ARCHITECTURE, LogitsOf, seeded_family
from worker.zoo.batched import train_batched, train_sequential
from worker.zoo.build_mnist_bank import BANK_PATH, MNIST_ULP, MNIST_ZOO, load_mnist
from worker.zoo.metrics import roc_auc
from worker.zoo.ulp_training import bank_scores, train_ulp
from worker.zoo.zoo import generate_zoo, training_job
from worker.zoo.zoo_spec import ZooSpec, plan_candidates

HELD_OUT_FAMILY = "lenet5"
#: A zoo that no choice about the shipped bank ever saw (its settings were picked before this zoo existed):
#: the bank's zoo recipe with another seed, 40 candidates per family, all of them test models.
FRESH_ZOO = dataclasses.replace(MNIST_ZOO, models_per_family=40, splits=(0.0, 0.0, 1.0), seed=7)
NCHW = InputLayout.nchw


def auc_of(bank, members) -> tuple[float, str]:
    labels = np.array([m.backdoored for m in members])
    return roc_auc(labels, bank_scores(bank, members)), f"{labels.sum()} backdoored vs {(~labels).sum()} clean"


def auc_rows(progress: Callable[[str], None]) -> list[tuple[str, str, float, str, str]]:
    images, labels, _ = load_mnist()
    zoo = generate_zoo(MNIST_ZOO, images, labels, progress=progress)
    shipped = load_bank(BANK_PATH)
    auc, note = auc_of(shipped, zoo.members(("test",)))
    rows = [("test-split AUC, M=10", "shipped bank", auc, "",
             f"{note}; 5 families, patch + blend (stored in the bank: {shipped.test_auc:.3f})")]
    auc, note = auc_of(shipped, generate_zoo(FRESH_ZOO, images, labels, progress=progress).members())
    rows.append(("fresh-zoo AUC, M=10", "shipped bank", auc, "", f"{note}; seed {FRESH_ZOO.seed}, saw no choice"))
    seen = tuple(f for f in MNIST_ZOO.families if f != HELD_OUT_FAMILY)
    start = time.perf_counter()
    bank = train_ulp(zoo.members(("train",), seen, ("patch",)), zoo.members(("val",), seen, ("patch",)),
                     MNIST_ZOO.input_shape, MNIST_ZOO.num_classes, MNIST_ULP, name="held-out")
    took = time.perf_counter() - start
    auc, note = auc_of(bank, zoo.members(("test",), seen, ("patch",)))
    rows.append(("test-split AUC, M=10", f"4 families, patch only ({took:.0f} s)", auc, "", note))
    auc, note = auc_of(bank, zoo.members(None, (HELD_OUT_FAMILY,), ("patch",)))
    rows.append(("held-out family AUC", f"{HELD_OUT_FAMILY}, patch triggers", auc, "", note + ", all splits"))
    blended = zoo.members(None, seen, ("blend",), clean=False) + [
        m for m in zoo.members(("test",), seen) if not m.backdoored]
    auc, note = auc_of(bank, blended)
    rows.append(("held-out trigger-kind AUC", "blends, seen families", auc, "", note))
    return rows


def latency_rows(repeats: int) -> list[tuple[str, str, float, str, str]]:
    bank = load_bank(BANK_PATH)
    model = read_model(FIXTURES / "mnist" / "csaw_c_clean_label_bd_net.h5").to(default_device())
    member, pre = LogitsOf(model), Preprocessing(255.0)
    device = default_device()
    patterns = torch.from_numpy(bank.patterns).to(device)
    weight, bias = torch.from_numpy(bank.weight).to(device), torch.from_numpy(bank.bias).to(device)
    temperature = bank.temperature

    @torch.no_grad()
    def batched() -> float:
        features = litmus_features(patterns, member, model.signature.input_layout, pre, temperature)
        return float(torch.softmax(features[None] @ weight.T + bias, 1)[0, 1])

    @torch.no_grad()
    def one_at_a_time() -> float:
        features = torch.cat([litmus_features(p[None], member, model.signature.input_layout, pre, temperature)
                              for p in patterns])
        return float(torch.softmax(features[None] @ weight.T + bias, 1)[0, 1])

    if abs(batched() - one_at_a_time()) > 1e-5:
        raise RuntimeError("batched and one-at-a-time scoring disagree")
    fast, slow = timed(batched, repeats), timed(one_at_a_time, repeats)
    end_to_end = timed(lambda: detect_ulp(model, pre), max(repeats // 3, 3))
    return [("detection latency", f"one batched pass of M={len(patterns)}", fast * 1e3, "ms",
             f"{slow / fast:.1f}x faster than one pattern at a time"),
            ("detection latency", "one pattern at a time (naive)", slow * 1e3, "ms", ""),
            ("detection latency", "detect_ulp (load banks + score)", end_to_end * 1e3, "ms", "")]


def training_seconds(family: str, count: int) -> dict[str, float]:
    """Wall time to train the zoo's first ``count`` models of ``family`` each way, with the zoo's settings."""
    images, labels, _ = load_mnist()
    spec = MNIST_ZOO
    train_x, train_y = images[:spec.train_images], labels[:spec.train_images]
    jobs = [training_job(c, train_y, spec) for c in plan_candidates(spec) if c.family == family][:count]

    def build(seed: int) -> torch.nn.Module:
        return seeded_family(family, spec.input_shape, spec.num_classes, seed)

    seconds = {}
    for name, train in (("sequential", lambda: train_sequential(build, jobs, train_x, spec.training, NCHW)),
                        ("batched, grouped", lambda: train_batched(build, jobs, train_x, spec.training, NCHW,
                                                                   engine="grouped")),
                        ("batched, vmap", lambda: train_batched(build, jobs, train_x, spec.training, NCHW,
                                                                engine="vmap"))):
        start = time.perf_counter()
        train()
        seconds[name] = time.perf_counter() - start
    return seconds


def throughput_rows(count: int) -> list[tuple[str, str, float, str, str]]:
    rows = []
    for family in ("cnn2-max", "cnn2-avg-bn"):
        seconds = training_seconds(family, count)
        for name, took in seconds.items():
            note = "" if name == "sequential" else f"; {seconds['sequential'] / took:.2f}x sequential"
            rows.append((f"zoo training, {family}", name, count * 60 / took, "/min",
                         f"{count} models x {MNIST_ZOO.training.epochs} epochs x {MNIST_ZOO.train_images} images"
                         f"{note}"))
    return rows


def scan_rows() -> list[tuple[str, str, float, str, str]]:
    model = read_model(FIXTURES / "mnist" / "csaw_c_clean_label_bd_net.h5")
    finding = detect_ulp(model, Preprocessing(255.0))
    verdict, _ = verdict_of([finding])
    return [("scan csaw_c_clean_label_bd_net.h5", f"--divide-by 255: {verdict.value}", finding.score, "score",
             f"threshold {finding.threshold:.3f}, bank {finding.bank}")]


def own_architecture_rows() -> list[tuple[str, str, float, str, str]]:
    """A control for the scan: the scanned model's own architecture, re-initialised and trained here, clean and
    with patch backdoors (the 'own' family), scored by the shipped bank at its threshold."""
    images, labels, _ = load_mnist()
    model = read_model(FIXTURES / "mnist" / "csaw_c_clean_label_bd_net.h5")
    spec = ZooSpec(MNIST_ZOO.input_shape, MNIST_ZOO.num_classes, (OWN_ARCHITECTURE,), models_per_family=12,
                   trigger_kinds=("patch",), splits=(0.0, 0.0, 1.0), group_size=12, seed=5)
    members = generate_zoo(spec, images, labels, own_model=model).members()
    bank = load_bank(BANK_PATH)
    flagged = bank_scores(bank, members) >= bank.threshold
    labels_ = np.array([m.backdoored for m in members])
    return [("control: csaw architecture retrained", "clean models flagged", float(flagged[~labels_].mean()),
             "rate", f"{flagged[~labels_].sum()} of {(~labels_).sum()} clean 'own' models at the shipped threshold"),
            ("control: csaw architecture retrained", "backdoored models flagged", float(flagged[labels_].mean()),
             "rate", f"{flagged[labels_].sum()} of {labels_.sum()} patch-backdoored 'own' models")]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--throughput-models", type=int, default=16)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rows = auc_rows(progress=print)
    rows += latency_rows(args.repeats)
    rows += throughput_rows(args.throughput_models)
    rows += scan_rows()
    rows += own_architecture_rows()
    print(f"bench.ulp: torch {torch.__version__}, {torch.get_num_threads()} threads, device {default_device()}")
    print(f"{'figure':<34} {'what':<36} {'value':>10}  note")
    for figure, what, value, unit, note in rows:
        print(f"{figure:<34} {what:<36} {value:>10.3f} {unit:<5} {note}")


if __name__ == "__main__":
    main()
