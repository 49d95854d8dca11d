"""Integrated Gradients: completeness on a known function, and the map of a planted trigger lies on the trigger."""

from pathlib import Path

import numpy as np
import torch
from planted_backdoor import CORNER, SIDE, PlantedModel, samples

from worker.engine.detect.attribution import IntegratedGradientsDetector, integrated_gradients, share_inside
from worker.engine.detect.base import DetectionContext
from worker.engine.detect.trigger import ReversedTrigger
from worker.engine.preprocess import Preprocessing


def test_ig_of_a_linear_function_is_exact_and_complete() -> None:
    weights = torch.arange(12, dtype=torch.float32).reshape(1, 2, 2, 3)

    def forward(x: torch.Tensor) -> torch.Tensor:
        return torch.stack([(x * weights).sum((1, 2, 3)), -(x * weights).sum((1, 2, 3))], 1)

    x = torch.rand(3, 2, 2, 3)
    attributions, gaps = integrated_gradients(forward, x, 0, steps=4)
    assert torch.allclose(attributions, x * weights, atol=1e-5)  # for a linear f, IG_i = x_i * w_i exactly
    assert gaps.abs().max() < 1e-4


def test_the_map_of_the_planted_trigger_concentrates_on_it(tmp_path: Path) -> None:
    model = PlantedModel("all-to-one")
    mask = np.zeros((SIDE, SIDE), np.float32)
    mask[CORNER] = 1.0
    trigger = ReversedTrigger(target=0, mask=mask, pattern=np.full((SIDE, SIDE, 1), 255.0, np.float32),
                              attack_success=1.0)
    context = DetectionContext(model=model, preprocessing=Preprocessing(divide_by=255.0), clean=samples(40),  # type: ignore[arg-type]
                               device=torch.device("cpu"), out_dir=tmp_path, triggers=[trigger])
    detector = IntegratedGradientsDetector()
    assert detector.applicable(context) is None
    finding = detector.detect(context)
    inside = finding.evidence["attribution_inside_mask_stamped"]
    assert inside > 4 * finding.evidence["mask_area_fraction"] and inside > finding.evidence[
        "attribution_inside_mask_clean"]
    assert finding.suspected_targets == [0] and finding.score is None
    assert finding.diagnostics["completeness_relative_error"] < 0.05
    assert finding.artifacts == ["ig-map.png", "ig-stamped.png"] and (tmp_path / "ig-map.png").stat().st_size > 0


def test_without_a_reversed_trigger_it_is_not_applicable(tmp_path: Path) -> None:
    context = DetectionContext(model=PlantedModel(None), preprocessing=Preprocessing(divide_by=255.0),  # type: ignore[arg-type]
                               clean=samples(10), device=torch.device("cpu"), out_dir=tmp_path)
    assert "no detector that ran before it found one" in (IntegratedGradientsDetector().applicable(context) or "")


def test_share_inside_counts_mass_under_the_mask() -> None:
    maps = np.zeros((2, 4, 4), np.float32)
    maps[:, 0, 0] = 3.0
    maps[:, 3, 3] = 1.0
    mask = np.zeros((4, 4), np.float32)
    mask[0, 0] = 1.0
    assert share_inside(maps, mask) == 0.75
