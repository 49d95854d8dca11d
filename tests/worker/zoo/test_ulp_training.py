"""ULP training: it learns, its gradients are accumulated explicitly, its threshold keeps its false-positive rate."""

import numpy as np
import pytest
import torch
from torch import nn

from schemas.models import InputLayout
from worker.core.bankfiles import LitmusBank
from worker.engine.detect.ulp import litmus_features, litmus_logits
from worker.engine.preprocess import Preprocessing
from worker.zoo.metrics import calibrate_threshold, false_positive_rate, roc_auc
from worker.zoo.ulp_training import UlpSettings, bank_scores, minibatch_gradients, train_ulp
from worker.zoo.zoo import ZooMember

FAST = UlpSettings(patterns=4, epochs=15, models_per_batch=4, restarts=1, seed=3)


def test_ulp_training_separates_backdoored_from_clean_models(small_zoo) -> None:
    train, validation = small_zoo.members(("train",)), small_zoo.members(("val", "test"))
    labels = np.array([m.backdoored for m in train])
    assert 0 < labels.sum() < len(labels)
    frozen = UlpSettings(patterns=4, epochs=1, models_per_batch=4, pattern_lr=0.0, classifier_lr=0.0, restarts=1,
                         seed=3)
    untrained = train_ulp(train, validation, (28, 28, 1), 10, frozen)
    trained = train_ulp(train, validation, (28, 28, 1), 10, FAST, test=validation)
    before = roc_auc(labels, bank_scores(untrained, train))
    after = roc_auc(labels, bank_scores(trained, train))
    assert after >= 0.9 and after > before
    assert np.all((trained.patterns >= 0) & (trained.patterns <= 255))
    history = trained.provenance["history"]
    best = max(range(len(history)), key=lambda i: (-history[i]["validation_loss"], history[i]["validation_auc"]))
    assert trained.provenance["best_epoch"] == best
    # The bank records its zoo's logit spread, and its own figures are measured on the reading the detector makes
    # with it (scores and AUC of validation models through bank_scores, which scales to the recorded spread).
    zoo = [*train, *validation, *validation]
    spreads = [float(litmus_logits(torch.from_numpy(trained.patterns), m.module, m.layout, m.preprocessing).std())
               for m in zoo]
    assert trained.logit_spread == pytest.approx(float(np.median(spreads)), rel=1e-5)
    assert trained.provenance["logit_spread_measured_on"].startswith(f"the bank's own zoo ({len(zoo)} models")
    assert trained.validation_auc == pytest.approx(roc_auc(np.array([m.backdoored for m in validation]),
                                                           bank_scores(trained, validation)))
    assert trained.features == "softmax/4"  # the temperature it trained at, which scoring then uses
    # The zoo's architectures are recorded, so that the detector runs the bank only on models like them.
    assert trained.provenance["architectures"] == [{"activations": ["relu"], "convolutional": True}]  # cnn2-max


def test_the_temperature_softens_the_features_and_scoring_uses_the_banks() -> None:
    member = _toy_member(0, False)
    patterns = torch.rand(2, 4, 4, 1, generator=torch.Generator().manual_seed(0)).mul(255)
    plain = litmus_features(patterns, member.module, member.layout, member.preprocessing)
    soft = litmus_features(patterns, member.module, member.layout, member.preprocessing, 4.0)
    assert torch.allclose(plain.reshape(2, 3).sum(1), torch.ones(2)) and torch.allclose(soft.reshape(2, 3).sum(1),
                                                                                         torch.ones(2))
    assert soft.max() < plain.max() and soft.min() > plain.min()  # closer to uniform
    bank = LitmusBank("t", patterns.numpy(), np.random.default_rng(0).normal(size=(2, 6)).astype(np.float32),
                      np.zeros(2, np.float32), 3, 0.5, 0.05, 1.0, 0.0, features="softmax/4")
    classifier = nn.Linear(6, 2)
    with torch.no_grad():
        classifier.weight.copy_(torch.from_numpy(bank.weight))
        classifier.bias.zero_()
        expected = torch.softmax(classifier(soft[None]), 1)[0, 1]
    assert bank_scores(bank, [member])[0] == pytest.approx(float(expected), abs=1e-6)


def test_threshold_keeps_validation_false_positives_within_target(small_zoo) -> None:
    validation = small_zoo.members(("val", "test"))
    for target in (0.05, 0.2, 0.5):
        bank = train_ulp(small_zoo.members(("train",)), validation, (28, 28, 1), 10,
                         UlpSettings(patterns=4, epochs=3, models_per_batch=4, target_fpr=target, restarts=1,
                                     seed=3))
        clean = bank_scores(bank, [m for m in validation if not m.backdoored])
        assert false_positive_rate(clean, bank.threshold) <= target
        assert bank.validation_fpr == false_positive_rate(clean, bank.threshold)


def _toy_member(seed: int, backdoored: bool) -> ZooMember:
    torch.manual_seed(seed)
    module = nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU(), nn.Flatten(), nn.Linear(8, 3))
    return ZooMember(module.requires_grad_(False), InputLayout.nchw, Preprocessing(255.0), backdoored)


def test_minibatch_gradients_are_the_mean_of_each_models_gradients() -> None:
    members = [_toy_member(seed, seed % 2 == 1) for seed in range(4)]
    patterns = torch.rand(2, 4, 4, 1, generator=torch.Generator().manual_seed(0)).mul(255).requires_grad_(True)
    classifier = nn.Linear(2 * 3, 2)
    weights = torch.tensor([1.0, 1.0])
    _, together = minibatch_gradients(patterns, classifier, members, weights, tv_weight=0.0, temperature=1.0)
    alone = [minibatch_gradients(patterns, classifier, [m], weights, tv_weight=0.0, temperature=1.0)[1]
             for m in members]
    for index, total in enumerate(together):
        torch.testing.assert_close(total, torch.stack([grads[index] for grads in alone]).mean(0))
    # What the official script computed: every entry of its list is the same ``.grad`` buffer, so the "average"
    # is whatever that buffer last held. The models' gradients differ, so that would fail the check above.
    aliased = []
    for member in members:
        patterns.grad = None if patterns.grad is None else patterns.grad.zero_()
        features = litmus_features(patterns, member.module, member.layout, member.preprocessing)
        loss = nn.functional.cross_entropy(classifier(features[None]), torch.tensor([int(member.backdoored)]))
        loss.backward()
        aliased.append(patterns.grad)
    buggy = torch.stack(aliased).mean(0)
    assert not torch.allclose(buggy, together[0])


@pytest.mark.parametrize(("clean", "target", "allowed"), [
    (np.linspace(0, 1, 20), 0.05, 1), (np.linspace(0, 0.9, 19), 0.05, 0), (np.full(10, 0.3), 0.1, 0),
    (np.array([0.1, 0.2, 0.9, 0.95]), 0.5, 2),
])
def test_calibrated_threshold_flags_at_most_the_target_fraction_of_clean_models(clean, target, allowed) -> None:
    backdoored = np.array([0.5, 0.97, 1.0])
    threshold = calibrate_threshold(clean, np.concatenate([clean, backdoored]), target)
    assert 0 <= threshold <= 1
    assert np.sum(clean >= threshold) <= allowed <= target * len(clean)
    assert false_positive_rate(clean, threshold) <= target


def test_roc_auc_counts_ties_half() -> None:
    assert roc_auc(np.array([0, 0, 1, 1]), np.array([0.1, 0.4, 0.35, 0.8])) == 0.75
    assert roc_auc(np.array([0, 1]), np.array([0.5, 0.5])) == 0.5


def test_a_test_split_of_one_kind_leaves_the_test_auc_unmeasured(small_zoo) -> None:
    # A small zoo (bdscreen banks train --models 24) can keep only clean test models: the bank is still written,
    # with no test AUC, rather than the whole training refused at the end.
    validation = small_zoo.members(("val", "test"))
    clean = [m for m in validation if not m.backdoored]
    bank = train_ulp(small_zoo.members(("train",)), validation, (28, 28, 1), 10,
                     UlpSettings(patterns=4, epochs=2, models_per_batch=4, restarts=1, seed=3), test=clean)
    assert bank.test_auc is None and bank.validation_auc is not None
