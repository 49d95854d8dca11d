"""Detection on fresh MNIST zoos: every detector and the calibrated verdict, with families and attack kinds held out.

    .venv/bin/python -m bench.detect [--seed 2026[,2027...]] [--models-per-family 14] [--verdict mmbd,nc,...]
                                     [--statistics reverse=score_log_odds] [--write-calibration] [--threads 1]
                                     [--recipe adam|sgd]

Trains (or reads from ``$BDSCREEN_CACHE/zoos``) a zoo from the real MNIST fixture: families cnn2-max (conv),
cnn1-bn (BatchNorm), mlp and lenet-tanh; attacks patch, sparse pixels and blend, a quarter of them all-to-all
(reported as their own kind). Every kept model is exported to ONNX (with a softmax, as uploads are) and read back
through bdscreen's reader, then each detector runs on it through the scan's own interface with 200 clean images
the zoo never trained on. Each (model, detector) finding is cached under ``$BDSCREEN_CACHE/detect-stats`` keyed by
the zoo and the detectors' source, so recalibrating reruns nothing.

Held-out scoring: a backdoored model of family F and kind K is scored by a verdict calibrated on the models of the
other families and other kinds (clean ones included only from other families); a clean model of family F by one
calibrated without family F. AUC, TPR and FPR at the shipped threshold are computed on those held-out scores.
Several seeds pool their zoos: one zoo of 45-49 models moved the held-out TPR between 0.79 and 0.95 for the same
code, so a figure over two or more fresh zoos says more; the folds are then fitted on the other families and kinds
of all of them, and each zoo also gets its own line. ``--write-calibration`` then fits the shipped calibration on
all models of the zoo(s).

What a user gets is the shipped calibration itself, fitted once on the calibration zoo: the last table applies it,
unchanged, to every model (families and kinds are not held out of it; the models are new to it). Every zoo so far
was trained with one recipe (Adam); models made elsewhere come from others. ``--recipe sgd`` trains the zoo with
momentum SGD, weight decay, larger batches and twice the epochs, a recipe no calibration and no detector setting
ever saw.
"""

import argparse
import hashlib
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from bench import FIXTURES
from schemas.report import Finding
from schemas.scan import DetectorName
from worker.engine.data import Dataset, read_mnist_idx
from worker.engine.detect import DETECTORS
from worker.engine.detect.base import DetectionContext
from worker.engine.detect.trigger import ReversedTrigger
from worker.engine.detect.verdict import (
    CALIBRATION_FILE,
    Calibration,
    Judgement,
    judge,
    load_calibration,
    statistic_of,
)
from worker.engine.formats import read_model
from worker.engine.scan import run_detectors
from worker.zoo.attack_sampling import Attack, AttackRanges, full_image_stamp
from worker.zoo.batched import TrainingSettings
from worker.zoo.build_mnist_bank import ULP_FAMILIES
from worker.zoo.calibrate import STATISTICS, Sample, every_subset, fit_calibration, statistics_of
from worker.zoo.metrics import roc_auc
from worker.zoo.zoo import ZooMember, cache_root, generate_zoo
from worker.zoo.zoo_spec import ZooSpec, plan_candidates

FAMILIES = ("cnn2-max", "cnn1-bn", "mlp", "lenet-tanh")
KINDS = ("patch", "sparse", "blend", "all-to-all")
UNSEEN_BY_BANK = tuple(f for f in FAMILIES if f not in ULP_FAMILIES)
ORACLE_DETECTORS = ("linf", "latent")
CLEAN_IMAGES = 200  # the detectors' clean set: images 3000-3199 of t10k, which no zoo model trained on


#: How a zoo's models are trained: the project's recipe (every calibration so far), and one held out of all of them
#: (the same number of optimiser steps: 3,000 images / 64 x 12 epochs against / 32 x 6).
RECIPES = {"adam": TrainingSettings(epochs=6),
           "sgd": TrainingSettings(epochs=12, batch_size=64, learning_rate=0.05, optimizer="sgd", weight_decay=5e-4)}


def zoo_spec(seed: int, per_family: int, recipe: str = "adam") -> ZooSpec:
    """The zoo: every model a test model (no splits), 6 epochs and 5-25 % poisoning, so that all-to-all attacks
    (a quarter of them) reach the 90 % attack success a kept model needs."""
    return ZooSpec((28, 28, 1), 10, FAMILIES, models_per_family=per_family, trigger_kinds=("patch", "sparse", "blend"),
                   attacks=AttackRanges(poison_rates=(0.05, 0.25), all_to_all_fraction=0.25),
                   training=RECIPES[recipe], splits=(1.0, 0.0, 0.0), group_size=16, seed=seed)


def mnist_zoo_data() -> tuple[np.ndarray, np.ndarray, Dataset]:
    """The t10k images (N x 28 x 28 x 1) and labels the zoos train on, and the detectors' clean set."""
    images, labels = read_mnist_idx(FIXTURES / "mnist" / "t10k-images-idx3-ubyte.gz",
                                    FIXTURES / "mnist" / "t10k-labels-idx1-ubyte.gz")
    images = images.reshape(-1, 28, 28, 1).astype(np.float32)
    clean = Dataset(images[3000:3000 + CLEAN_IMAGES].transpose(0, 3, 1, 2).copy(),
                    labels[3000:3000 + CLEAN_IMAGES].astype(np.int64))
    return images, labels, clean


def kind_of(member: ZooMember) -> str:
    attack = member.record.attack
    if attack is None:
        return "clean"
    return "all-to-all" if attack["target"] is None else attack["kind"]


def detectors_key() -> str:
    """Changes whenever a detector's code does (the verdict and its calibration are left out)."""
    folder = Path(__file__).resolve().parents[1] / "worker" / "engine" / "detect"
    digest = hashlib.sha256()
    for path in sorted(folder.rglob("*.py")):
        if path.name != "verdict.py":
            digest.update(path.name.encode() + path.read_bytes())
    return digest.hexdigest()[:16]


def canonical_copy(member: ZooMember, folder: Path):
    """The zoo model as an upload: exported to ONNX with a softmax, read back by bdscreen's reader."""
    path = folder / f"model-{member.record.index}.onnx"
    wrapped = nn.Sequential(member.module, nn.Softmax(dim=1)).eval()
    torch.onnx.export(wrapped, torch.zeros(1, 1, 28, 28), path, input_names=["image"], output_names=["scores"],
                      dynamic_axes={"image": {0: "batch"}, "scores": {0: "batch"}}, dynamo=False)
    return read_model(path)


def oracle_trigger(attack: Attack) -> ReversedTrigger:
    """A zoo attack's own trigger as a trigger detector would report it (all-to-all: target 0 stands in)."""
    pattern, alpha = full_image_stamp(attack.trigger, (28, 28, 1))
    return ReversedTrigger(target=attack.poisoning.target or 0, mask=alpha[..., 0], pattern=pattern,
                           attack_success=1.0)


def findings_of(member: ZooMember, clean: Dataset, cache: Path, folder: Path,
                oracle: ReversedTrigger | None = None) -> dict[str, tuple[Finding, float]]:
    """Every detector's finding on one zoo model, with its seconds; from the cache when there. With ``oracle``,
    only the detectors that read triggers run, on that trigger alone."""
    path = cache / f"{member.record.index:06d}.json"
    if path.is_file():
        stored = json.loads(path.read_text())
        return {name: (Finding.model_validate(entry["finding"]), entry["seconds"]) for name, entry in stored.items()}
    model = canonical_copy(member, folder)
    context = DetectionContext(model=model, preprocessing=member.preprocessing, clean=clean,
                               device=torch.device("cpu"), seed=0, out_dir=folder)
    if oracle is not None:
        context.triggers.append(oracle)
    results: dict[str, tuple[Finding, float]] = {}
    for name in ORACLE_DETECTORS if oracle is not None else DETECTORS:
        # One at a time, in the scan's order, through the scan's own runner (for the timing).
        start = time.perf_counter()
        found, errors = run_detectors([DetectorName(name)], context)
        if errors:
            raise RuntimeError(f"{name} crashed on zoo model {member.record.index}: {errors[0].message}")
        results[name] = (found[0], time.perf_counter() - start)
    path.write_text(json.dumps({name: {"finding": f.model_dump(mode="json"), "seconds": s}
                                for name, (f, s) in results.items()}))
    return results


def sample_of(member: ZooMember, results: dict[str, tuple[Finding, float]]) -> Sample:
    return Sample(member.backdoored, member.record.family, kind_of(member),
                  statistics_of(finding for finding, _ in results.values()))


def held_out_judgements(samples: list[Sample], findings: list[list[Finding]], chosen: list[tuple[str, ...]],
                        threshold: float, combine: str) -> list[Judgement]:
    """Each model's verdict from a calibration that saw neither its family nor (if backdoored) its kind."""
    judgements = []
    fits: dict[tuple[str, str], Calibration] = {}
    for i, sample in enumerate(samples):
        key = (sample.family, sample.kind)
        if key not in fits:
            training = [s for s in samples
                        if s.family != sample.family and (s.kind == "clean" or s.kind != sample.kind)]
            fits[key] = calibration_from(fit_calibration(training, chosen, threshold, combine=combine))
        used = [f for f in findings[i] if any(f.detector in subset for subset in chosen)]
        judgements.append(judge(used, fits[key]))
    return judgements


def held_out_scores(samples: list[Sample], findings: list[list[Finding]], chosen: list[tuple[str, ...]],
                    threshold: float, combine: str) -> np.ndarray:
    return np.array([j.score or 0.0 for j in held_out_judgements(samples, findings, chosen, threshold, combine)])


def calibration_from(content: dict) -> Calibration:
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "verdict.json"
        path.write_text(json.dumps(content))
        return load_calibration(path)


def rates(labels: np.ndarray, scores: np.ndarray, threshold: float) -> tuple[float, float, float]:
    """AUC (nan when one class is absent), TPR and FPR at ``threshold``."""
    flagged = scores >= threshold
    auc = roc_auc(labels, scores) if labels.any() and (~labels).any() else float("nan")
    tpr = float(flagged[labels].mean()) if labels.any() else float("nan")
    fpr = float(flagged[~labels].mean()) if (~labels).any() else float("nan")
    return auc, tpr, fpr


def table(title: str, rows: list[tuple]) -> None:
    print(f"\n{title}")
    print(f"{'what':32s} {'models':>12s} {'AUC':>6s} {'TPR':>6s} {'FPR':>6s} {'s/model':>8s}")
    for name, count, *figures in rows:
        cells = [f"{v:6.3f}" if v == v else "     -" for v in figures[:3]] + [f"{figures[3]:8.2f}"[-8:]]
        print(f"{name:32s} {count:>12s} {' '.join(cells).replace('     nan', '       -')}")


def breakdown(samples: list[Sample], scores: np.ndarray, threshold: float) -> list[tuple]:
    labels = np.array([s.backdoored for s in samples])
    rows = []
    for kind in KINDS:  # each kind against all clean models
        keep = np.array([s.kind in (kind, "clean") for s in samples])
        rows.append((f"  kind {kind}", f"{labels[keep].sum()}/{(~labels[keep]).sum()}",
                     *rates(labels[keep], scores[keep], threshold), float("nan")))
    # The last group: the families the shipped ULP bank never trained on, as models made elsewhere are to it.
    groups = [(f"family {f}", (f,)) for f in FAMILIES] + [("unseen by the ULP bank", UNSEEN_BY_BANK)]
    for name, families in groups:
        keep = np.array([s.family in families for s in samples])
        rows.append((f"  {name}", f"{labels[keep].sum()}/{(~labels[keep]).sum()}",
                     *rates(labels[keep], scores[keep], threshold), float("nan")))
    return rows


def per_zoo(samples: list[Sample], scores: np.ndarray, zoo_seeds: list[int], threshold: float) -> list[tuple]:
    """One row per zoo when several are pooled (each model still scored by the pooled folds)."""
    if len(set(zoo_seeds)) < 2:
        return []
    labels, seeds_ = np.array([s.backdoored for s in samples]), np.array(zoo_seeds)
    return [(f"  zoo seed {seed}", f"{labels[seeds_ == seed].sum()}/{(~labels[seeds_ == seed]).sum()}",
             *rates(labels[seeds_ == seed], scores[seeds_ == seed], threshold), float("nan"))
            for seed in dict.fromkeys(zoo_seeds)]


def seeds(text: str) -> list[int]:
    """``--seed``'s value: one zoo seed or several, comma-separated."""
    try:
        parsed = [int(part) for part in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected seeds like 2029 or 2029,2030, got {text!r}") from None
    if len(set(parsed)) < len(parsed):  # a zoo pooled twice would count each of its models twice
        raise argparse.ArgumentTypeError(f"each seed once, got {text!r}")
    return parsed


#: Further figures of the findings whose separation is worth printing beside the verdict's statistic.
EXTRA_STATISTICS = {"mmbd": ("neg_log10_p",), "latent": ("clean_entropy",)}


def detector_rows(labels: np.ndarray, findings: list[list[Finding]], seconds: dict[str, list[float]]) -> list[tuple]:
    rows = []
    for name in seconds:
        mine = [next(f for f in fs if f.detector == name) for fs in findings]
        ran = np.array([f.applicable and f.score is not None for f in mine])
        flagged = np.array([r and f.threshold is not None and f.score >= f.threshold
                            for r, f in zip(ran, mine, strict=True)])
        judged = ran & np.array([f.threshold is not None for f in mine])
        for key in (*STATISTICS.get(name, ()), *EXTRA_STATISTICS.get(name, ())):
            values = np.array([statistic_of(f, key) if r else np.nan for r, f in zip(ran, mine, strict=True)], float)
            usable = ran & np.isfinite(values)
            auc = roc_auc(labels[usable], values[usable]) if labels[usable].any() and (~labels[usable]).any() \
                else float("nan")
            tpr = flagged[judged & labels].mean() if (judged & labels).any() else float("nan")
            fpr = flagged[judged & ~labels].mean() if (judged & ~labels).any() else float("nan")
            rows.append((f"{name}: {key}", f"{(usable & labels).sum()}/{(usable & ~labels).sum()}", auc, tpr, fpr,
                         float(np.mean(seconds[name]))))
    return rows


def screen(spec: ZooSpec, images: np.ndarray, labels: np.ndarray, clean: Dataset, folder: Path,
           shard: tuple[int, ...], oracle_triggers: bool):
    """The zoo's key, and for each kept member of this shard (``(I, N)``: every N-th from the I-th) its findings and
    its attack's target (None: clean or all-to-all), screening what the cache does not hold yet."""
    start = time.perf_counter()
    zoo = generate_zoo(spec, images, labels, progress=print)
    print(f"zoo {zoo.key}: {len(zoo.records)} candidates, {sum(r.kept for r in zoo.records)} kept "
          f"({time.perf_counter() - start:.0f} s)")
    cache = cache_root() / "detect-stats" / zoo.key / (detectors_key() + ("-oracle" if oracle_triggers else ""))
    cache.mkdir(parents=True, exist_ok=True)
    members = zoo.members()
    plan = {c.index: c.attack for c in plan_candidates(spec)}
    attacks = [a for a in plan.values() if a is not None]
    screened = []
    for number, member in enumerate(members):
        if number % shard[1] != shard[0]:
            continue
        # A clean member's oracle is another member's attack (a clean model has no trigger of its own).
        oracle = oracle_trigger(plan[member.record.index] or attacks[member.record.index % len(attacks)]) \
            if oracle_triggers else None
        target = plan[member.record.index].poisoning.target if member.backdoored else None  # type: ignore[union-attr]
        screened.append((member, findings_of(member, clean, cache, folder, oracle), target))
        print(f"\r{number + 1}/{len(members)} models screened", end="", flush=True)
    print()
    return zoo.key, screened


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seed", type=seeds, default=[2026],
                        help="the zoo's seed, or several comma-separated: their models are pooled, and each model "
                             "is scored by a verdict fitted on the other families and kinds of all of them")
    parser.add_argument("--models-per-family", type=int, default=14)
    parser.add_argument("--verdict", default=None,
                        help="detector sets the verdict is calibrated for, in order of preference: 'ulp;mmbd' "
                             "(default: the shipped calibration's sets)")
    parser.add_argument("--combine", choices=("logistic", "max"), default=None,
                        help="how the verdict combines the detectors (default: the shipped calibration's way)")
    parser.add_argument("--write-calibration", action="store_true", help=f"fit and write {CALIBRATION_FILE.name}")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--recipe", choices=tuple(RECIPES), default="adam",
                        help="how the zoo's models are trained (sgd: a recipe no calibration saw)")
    parser.add_argument("--shard", metavar="I/N", help="only screen (and cache) every N-th model from the I-th, "
                                                       "then stop: to fill the cache from N processes")
    parser.add_argument("--statistics", action="append", default=[], metavar="DETECTOR=KEY[,KEY...]",
                        help="weigh these statistics of a detector instead of the shipped ones (to compare features "
                             "on the development zoo), e.g. reverse=score_log_odds")
    parser.add_argument("--oracle-triggers", action="store_true",
                        help="measure linf and latent with each backdoored model's own trigger (clean models: the "
                             "trigger of another zoo model) instead of the verdict")
    args = parser.parse_args()
    for override in args.statistics:
        detector, _, keys = override.partition("=")
        if detector not in STATISTICS or not keys:
            parser.error(f"--statistics: expected DETECTOR=KEY[,KEY...] with DETECTOR one of {', '.join(STATISTICS)}")
        STATISTICS[detector] = tuple(keys.split(","))
    torch.set_num_threads(args.threads)
    images, labels, clean = mnist_zoo_data()
    samples, findings, seconds, targets, zoo_seeds, keys = [], [], {}, [], [], []
    shard = tuple(int(part) for part in args.shard.split("/")) if args.shard else (0, 1)
    with tempfile.TemporaryDirectory() as folder:
        for seed in args.seed:
            key, screened = screen(zoo_spec(seed, args.models_per_family, args.recipe), images, labels, clean,
                                   Path(folder), shard, args.oracle_triggers)
            keys.append(key)
            for member, results, target in screened:
                samples.append(sample_of(member, results))
                targets.append(target)
                findings.append([f for f, _ in results.values()])
                zoo_seeds.append(seed)
                for name, (_, took) in results.items():
                    seconds.setdefault(name, []).append(took)
    if args.shard:
        return
    for override in args.statistics:
        detector = override.partition("=")[0]
        if not any(detector in sample.statistics for sample in samples):
            parser.error(f"--statistics {override}: no model's {detector} finding gives all of these statistics")
    labels_ = np.array([s.backdoored for s in samples])
    table("Detectors on every kept model (AUC of each statistic; TPR/FPR at the detector's own threshold, if any)",
          detector_rows(labels_, findings, seconds))
    if args.oracle_triggers:
        return
    shipped = load_calibration() if CALIBRATION_FILE.is_file() else None
    if args.verdict:
        chosen = [tuple(part.split(",")) for part in args.verdict.split(";")]
    elif shipped:
        chosen = [tuple(sorted(r.detectors)) for r in shipped.regressions]
    else:
        chosen = every_subset(tuple(STATISTICS))
    threshold = shipped.threshold if shipped else 0.5
    combine = args.combine or (shipped.combine if shipped else "logistic")
    judgements = held_out_judgements(samples, findings, chosen, threshold, combine)
    scores = np.array([j.score or 0.0 for j in judgements])
    total = float(np.mean([sum(seconds[n][i] for n in seconds) for i in range(len(samples))]))
    names = sorted({d for subset in chosen for d in subset})
    sets = "; ".join(",".join(c) for c in chosen)
    table(f"Verdict ({combine}) calibrated for {sets} (held-out family and kind; threshold {threshold:.2f})",
          [("verdict", f"{labels_.sum()}/{(~labels_).sum()}", *rates(labels_, scores, threshold), total),
           *breakdown(samples, scores, threshold), *per_zoo(samples, scores, zoo_seeds, threshold)])
    caught = [(j, t) for j, t in zip(judgements, targets, strict=True) if t is not None and j.score is not None
              and j.score >= threshold]
    print(f"  flagged all-to-one BadNets whose suspected targets include the true one: "
          f"{sum(t in j.suspected_targets for j, t in caught)}/{len(caught)} (named first: "
          f"{sum(j.suspected_targets[:1] == [t] for j, t in caught)}, none named: "
          f"{sum(not j.suspected_targets for j, _ in caught)})")
    for dropped in names if len(names) > 1 else ():
        rest = [kept for subset in chosen if (kept := tuple(d for d in subset if d != dropped))]
        auc, tpr, fpr = rates(labels_, held_out_scores(samples, findings, rest, threshold, combine), threshold)
        print(f"  without {dropped:10s} AUC {auc:.3f} TPR {tpr:.3f} FPR {fpr:.3f}")
    if shipped:
        as_shipped = np.array([judge(f, shipped).score or 0.0 for f in findings])
        table(f"The shipped calibration as a scan applies it (zoo {shipped.provenance.get('zoo_key')}, no refit; "
              f"threshold {shipped.threshold:.2f})",
              [("verdict", f"{labels_.sum()}/{(~labels_).sum()}", *rates(labels_, as_shipped, shipped.threshold),
                total), *breakdown(samples, as_shipped, shipped.threshold),
               *per_zoo(samples, as_shipped, zoo_seeds, shipped.threshold)])
    if args.write_calibration:
        auc, tpr, fpr = rates(labels_, scores, threshold)
        seed = args.seed[0] if len(args.seed) == 1 else args.seed
        provenance = {"zoo_key": ",".join(keys), "seed": seed, "recipe": args.recipe, "families": list(FAMILIES),
                      "kinds": list(KINDS),
                      "models": len(samples), "backdoored": int(labels_.sum()),
                      "held_out": {"auc": auc, "tpr": tpr, "fpr": fpr},
                      "made_by": "python -m bench.detect --write-calibration"}
        content = fit_calibration(samples, chosen, threshold, provenance, combine)
        CALIBRATION_FILE.parent.mkdir(exist_ok=True)
        CALIBRATION_FILE.write_text(json.dumps(content, indent=1) + "\n")
        print(f"wrote {CALIBRATION_FILE}")


if __name__ == "__main__":
    main()
