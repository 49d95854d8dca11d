"""The l_inf activation bias and the latent entropy on the planted backdoor and its twin, with the planted trigger."""

import numpy as np
import torch

from tests.worker.engine.detect.planted import PREPROCESSING, TARGET, clean_set, corner_trigger, planted_model
from worker.engine.detect.activation import LatentEntropyDetector, LinfBiasDetector
from worker.engine.detect.base import DetectionContext
from worker.engine.detect.latent import vine_entropy


def context(model, folder, triggers=True, clean=True) -> DetectionContext:
    return DetectionContext(model=model, preprocessing=PREPROCESSING, clean=clean_set(model) if clean else None,
                            device=torch.device("cpu"), out_dir=folder,
                            triggers=[corner_trigger()] if triggers else [])


def test_the_trigger_concentrates_the_backdoored_models_activation_more_than_the_twins(tmp_path):
    detector = LinfBiasDetector()
    planted = detector.detect(context(planted_model(tmp_path, True), tmp_path))
    twin = detector.detect(context(planted_model(tmp_path, False), tmp_path))
    assert planted.applicable and planted.suspected_targets == [TARGET]
    assert planted.evidence["bias_shift"] > 0.3 > twin.evidence["bias_shift"]
    assert planted.diagnostics["samples_used"] == 64


def test_vine_entropy_of_known_distributions():
    # A standard normal in 8 dimensions has 4 log(2 pi e) = 11.35 nats; scaling by 0.1 subtracts 8 log 10.
    z = np.random.default_rng(0).normal(size=(400, 8))
    assert abs(vine_entropy(z) - 11.35) < 0.6
    assert abs(vine_entropy(0.1 * z) - (11.35 - 8 * np.log(10))) < 0.6


def test_latent_entropy_reports_both_entropies(tmp_path):
    finding = LatentEntropyDetector().detect(context(planted_model(tmp_path, True), tmp_path))
    evidence = finding.evidence
    assert evidence["entropy_shift"] == evidence["stamped_entropy"] - evidence["clean_entropy"]
    assert finding.suspected_targets == [TARGET] and 0.0 <= finding.score <= 1.0


def test_not_applicable_without_a_trigger_or_with_too_little_clean_data(tmp_path):
    model = planted_model(tmp_path, True)
    for detector in (LinfBiasDetector(), LatentEntropyDetector()):
        assert detector.needs_clean_data
        assert detector.applicable(context(model, tmp_path, triggers=False)) is None  # pre-flight: no trigger yet
        finding = detector.detect(context(model, tmp_path, triggers=False))
        assert not finding.applicable and "trigger" in finding.reason
        few = context(model, tmp_path)
        few.clean = clean_set(model, count=5)
        assert "clean samples" in detector.applicable(few)
