"""Trigger reverse-engineering on hand-planted backdoors with known answers, their clean twin, and bad input."""

from pathlib import Path

import numpy as np
import pytest
import torch
from planted_backdoor import CORNER, SIDE, PlantedModel, samples

from worker.engine.data import Dataset
from worker.engine.detect import DETECTORS
from worker.engine.detect.base import DetectionContext
from worker.engine.detect.prescreen import PrescreenSettings, Round, prescreen
from worker.engine.detect.reverse import (
    ReverseEngineeringDetector,
    anomaly_indices,
    median_by_target,
    runner_up_ratio,
    score_of,
)
from worker.engine.detect.trigger_search import SearchResult, SearchSettings, trigger_search
from worker.engine.preprocess import Preprocessing, model_input
from worker.engine.scan import run_detectors

#: A shorter search than the default, enough for 8 x 8 inputs: keeps each test to seconds.
QUICK = SearchSettings(steps=150, batch=12, min_steps=30, stall=15)
#: One step: no candidate reaches the goal, so the all-to-one search finds nothing and the source-specific one runs.
NO_ALL_TO_ONE = SearchSettings(steps=1, batch=12, min_steps=0, stall=1)
SEARCHED = {"source-specific": "pairs", "source-specific per target": "target classes"}


def _context(model: PlantedModel, clean: Dataset | None, out: Path) -> DetectionContext:
    return DetectionContext(model=model, preprocessing=Preprocessing(divide_by=255.0), clean=clean,  # type: ignore[arg-type]
                            device=torch.device("cpu"), out_dir=out)


def _corner() -> np.ndarray:
    region = np.zeros((SIDE, SIDE), bool)
    region[CORNER] = True
    return region


def test_an_all_to_one_backdoor_is_found_with_its_target_and_trigger(tmp_path: Path) -> None:
    """Through the scan's own runner with the registry's default settings: reverse finds it, ig explains it."""
    context = _context(PlantedModel("all-to-one"), samples(60), tmp_path)
    (finding, explained), errors = run_detectors(["reverse", "ig"], context)  # type: ignore[list-item]
    assert not errors and explained.detector == "ig" and explained.applicable
    assert explained.evidence["attribution_inside_mask_stamped"] > 2 * explained.evidence["mask_area_fraction"]
    assert finding.applicable and finding.score is not None and finding.threshold is not None
    assert finding.score >= finding.threshold and finding.suspected_targets == [0]
    assert finding.evidence["mode"] == "all-to-one"
    trigger = context.triggers[0]
    assert trigger.target == 0 and trigger.source is None and trigger.attack_success >= 0.9
    # The reversed mask sits on the planted corner: most of its mass is inside the 4 corner pixels.
    assert trigger.mask[_corner()].sum() / trigger.mask.sum() > 0.6
    assert finding.evidence["smallest_masks"][0]["target"] == 0
    assert finding.diagnostics["images_real"] == 60 and finding.diagnostics["held_out_kind"] == "real"
    for name in finding.artifacts:
        assert (tmp_path / name).stat().st_size > 0
    assert set(finding.artifacts) == {"reverse-mask.png", "reverse-pattern.png", "reverse-stamped.png"}
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(finding.artifacts + explained.artifacts)


def test_the_clean_twin_is_not_flagged_and_hands_on_no_trigger(tmp_path: Path) -> None:
    context = _context(PlantedModel(None), samples(60), tmp_path)
    finding = ReverseEngineeringDetector(QUICK).detect(context)
    assert finding.score is not None and finding.threshold is not None
    assert finding.score < finding.threshold and finding.suspected_targets == []
    assert finding.evidence["leading_target"] == finding.evidence["smallest_masks"][0]["target"]
    assert context.triggers == []
    assert "No abnormally small trigger" in finding.reason
    searched = SEARCHED.get(finding.evidence["mode"], "classes")
    assert f"among {finding.evidence['candidates']} {searched};" in finding.reason
    # The runner-up ratio the verdict weighs is in the words too.
    assert f"{finding.evidence['runner_up_ratio']:.1f}x smaller than the smallest towards any other class" \
        in finding.reason


def test_the_runner_up_is_the_smallest_trigger_towards_another_class() -> None:
    """Pairs 1->3 and 2->3 are both small: the ratio compares target 3 with class 5, not with itself."""
    l1 = np.array([0.01, 0.02, 0.04, 0.08])
    assert runner_up_ratio(l1, np.array([3, 3, 5, 6])) == pytest.approx(4.0)
    assert runner_up_ratio(l1, np.array([3, 4, 5, 6])) == pytest.approx(2.0)  # all-to-one: the next candidate
    assert np.isnan(runner_up_ratio(l1[:2], np.array([3, 3])))


def test_an_all_to_all_backdoor_is_flagged(tmp_path: Path) -> None:
    context = _context(PlantedModel("all-to-all"), samples(60), tmp_path)
    finding = ReverseEngineeringDetector(QUICK).detect(context)
    assert finding.score is not None and finding.threshold is not None and finding.score >= finding.threshold
    searched = SEARCHED.get(finding.evidence["mode"], "classes")
    assert f"for {finding.evidence['candidates']} {searched} searched" in finding.reason
    for trigger in context.triggers:  # a flagged pair is a planted one: source s goes to s + 1
        if trigger.source is not None:
            assert trigger.target == (trigger.source + 1) % 5


def test_one_trigger_per_source_towards_one_target_is_found_per_target(tmp_path: Path) -> None:
    """Every pair towards class 0 needs one corner pixel; the pairs judged per target find it, with the smallest pair's
    trigger (source-specific, on the corner) handed on."""
    context = _context(PlantedModel("per-source"), samples(60), tmp_path)
    finding = ReverseEngineeringDetector(NO_ALL_TO_ONE, pairwise=QUICK).detect(context)
    assert finding.score is not None and finding.threshold is not None and finding.score >= finding.threshold
    assert finding.evidence["mode"] == "source-specific per target" and finding.suspected_targets == [0]
    assert finding.evidence["candidates"] == 5 and finding.evidence["leading_target"] == 0
    assert "at least half the source classes to class 0" in finding.reason
    assert "for 5 target classes" in finding.reason
    # The ratio is one of single triggers (the smallest pair's over the smallest towards another class), as the verdict
    # reads it in every mode.
    assert f"{finding.evidence['runner_up_ratio']:.1f}x smaller than the smallest towards any other class" \
        in finding.reason
    trigger = context.triggers[0]
    assert trigger.target == 0 and trigger.source in (1, 2, 3, 4) and trigger.attack_success >= 0.9
    assert trigger.mask[_corner()].sum() / trigger.mask.sum() > 0.6


def test_the_clean_twin_is_not_flagged_per_target_either(tmp_path: Path) -> None:
    context = _context(PlantedModel(None), samples(60), tmp_path)
    finding = ReverseEngineeringDetector(NO_ALL_TO_ONE, pairwise=QUICK).detect(context)
    assert finding.diagnostics["per_target_best_score"] < 0.5
    assert finding.diagnostics["source_specific_best_score"] < 0.5
    assert finding.score is not None and finding.score < 0.5 and context.triggers == []


def test_pairs_seen_per_target_take_the_median_over_sources_and_the_smallest_pairs_trigger() -> None:
    targets, sources = np.array([0, 0, 0, 1, 1, 2]), np.array([1, 2, 3, 0, 2, 0])
    l1 = np.array([0.03, 0.01, 0.05, 0.2, 0.4, 0.3])
    k = len(l1)
    masks = np.arange(k, dtype=np.float32)[:, None, None] * np.ones((k, 2, 2), np.float32)
    pairs = SearchResult(targets, sources, masks, np.zeros((k, 2, 2, 1)), l1, np.ones(k, bool), np.zeros(k, int),
                         np.zeros(k))
    seen = median_by_target(pairs, classes=4)  # class 3 has no pair: left out
    assert seen.targets.tolist() == [0, 1, 2] and seen.sources.tolist() == [2, 0, 0]
    assert seen.mask_l1 == pytest.approx([0.03, 0.3, 0.3])
    assert seen.masks[:, 0, 0].tolist() == [1.0, 3.0, 5.0]  # the smallest pair's mask: 0 <- 2, 1 <- 0, 2 <- 0


def test_the_source_specific_search_finds_the_planted_pairs_smallest() -> None:
    model = PlantedModel("all-to-all")
    data = samples(60)
    prep = Preprocessing(divide_by=255.0)

    def forward(images: torch.Tensor) -> torch.Tensor:
        return model.logits(model_input(images, prep, model.signature.input_layout))

    pairs = [(s, t) for s in range(5) for t in range(5) if s != t]
    result = trigger_search(forward, torch.from_numpy(data.x), torch.from_numpy(data.y), [t for _, t in pairs],
                            [s for s, _ in pairs], QUICK)
    smallest = np.argsort(result.mask_l1)[:5]
    assert {(int(result.sources[i]), int(result.targets[i])) for i in smallest} == {(s, (s + 1) % 5) for s in range(5)}
    assert anomaly_indices(result.mask_l1)[smallest].min() > 2


def test_a_stopped_candidate_is_no_longer_run_and_the_weights_get_no_gradient() -> None:
    """Each optimisation step runs only the candidates still searching (steps > i at step i), and the search takes
    gradients of its masks and patterns alone, even when the model's weights require grad."""
    model = PlantedModel("all-to-one")
    model.protos.requires_grad_(True)  # as a read model's weights do
    data = samples(60)
    prep = Preprocessing(divide_by=255.0)
    optimised: list[int] = []  # stamped images per forward pass that builds a graph (not the verification passes)

    def forward(images: torch.Tensor) -> torch.Tensor:
        if torch.is_grad_enabled():
            optimised.append(len(images))
        return model.logits(model_input(images, prep, model.signature.input_layout))

    result = trigger_search(forward, torch.from_numpy(data.x), torch.from_numpy(data.y), list(range(5)), None, QUICK)
    assert result.steps.min() < result.steps.max()  # some candidates stopped before others
    assert optimised == [QUICK.batch * int((result.steps > i).sum()) for i in range(int(result.steps.max()))]
    assert model.protos.grad is None


def test_five_images_are_augmented_and_judged_on_fresh_augmentations(tmp_path: Path) -> None:
    clean = samples(5)
    context = _context(PlantedModel("all-to-one"), clean, tmp_path)
    finding = ReverseEngineeringDetector(QUICK).detect(context)
    assert finding.diagnostics["images_real"] == 5 and finding.diagnostics["images_augmented"] > 0
    assert finding.diagnostics["held_out_kind"] == "augmented" and finding.diagnostics["held_out_images"] > 0
    assert finding.diagnostics["images_searched"] == 5 + finding.diagnostics["images_augmented"]
    assert finding.suspected_targets == [0]


def test_no_data_and_too_little_data_are_not_applicable_with_the_reason(tmp_path: Path) -> None:
    detector = ReverseEngineeringDetector()
    assert "needs clean images" in (detector.applicable(_context(PlantedModel(None), None, tmp_path)) or "")
    two = samples(2)
    assert "at least 3 clean images; the scan has 2" in (detector.applicable(_context(PlantedModel(None), two,
                                                                                       tmp_path)) or "")
    findings, errors = run_detectors(["reverse"], _context(PlantedModel(None), None, tmp_path))  # type: ignore[list-item]
    assert not errors and not findings[0].applicable and "needs clean data" in findings[0].reason


def test_the_prescreen_keeps_a_planted_target_among_many_classes() -> None:
    model = PlantedModel("all-to-one")
    data = samples(20)
    x, y = torch.from_numpy(data.x), torch.from_numpy(data.y)
    prep = Preprocessing(divide_by=255.0)

    def forward(images: torch.Tensor) -> torch.Tensor:
        return model.logits(model_input(images, prep, model.signature.input_layout))

    # The toy's corner needs more steps to light up than a real network's trigger: rounds of 20 steps.
    settings = PrescreenSettings(rounds=(Round(20, 4, 0.5), Round(20, 8, 0.5)))
    result = prescreen(forward, x, y, 5, settings)
    assert result.order[0] == 0 and result.rounds_survived[0] == 2
    assert result.image_passes == 5 * 4 * 20 + 3 * 8 * 20


def test_the_anomaly_index_and_score_are_monotone() -> None:
    sizes = np.array([0.01, 0.2, 0.22, 0.25, 0.18, 0.21, 0.3, 0.19])
    anomaly = anomaly_indices(sizes)
    assert np.argmax(anomaly) == 0 and anomaly[0] > 5
    assert 0 < score_of(1.0, 10) < score_of(3.0, 10) < score_of(6.0, 10) < 1
    assert score_of(4.0, 10) > score_of(4.0, 1000)  # more candidates: a larger index is needed by chance


def test_the_registry_runs_trigger_finders_first() -> None:
    names = list(DETECTORS)
    assert names.index("reverse") < names.index("ig")


@pytest.mark.parametrize("attack", ["all-to-one"])
def test_the_planted_backdoor_really_works(attack: str) -> None:
    """The known answer the tests rely on: stamping the corner sends inputs to class 0; clean inputs are right."""
    model = PlantedModel(attack)
    data = samples(50)
    x = torch.from_numpy(data.x)
    assert (model(x / 255).argmax(1).numpy() == data.y).mean() > 0.95
    stamped = x.clone()
    stamped[:, CORNER[0], CORNER[1], 0] = 255.0
    assert (model(stamped / 255).argmax(1) == 0).float().mean() > 0.95


def test_the_per_source_planted_backdoor_needs_its_own_pixel_for_each_source() -> None:
    """The known answer of the per-target test: pixel s - 1 of the corner alone sends class s to 0, and no other
    source; with the whole corner bright nothing fires."""
    model = PlantedModel("per-source")
    data = samples(50)
    x = torch.from_numpy(data.x)
    assert (model(x / 255).argmax(1).numpy() == data.y).mean() > 0.95
    for source in range(1, 5):
        stamped = x.clone()
        stamped[:, CORNER[0], CORNER[1], 0] = 0.0
        stamped[:, SIDE - 2 + (source - 1) // 2, SIDE - 2 + (source - 1) % 2, 0] = 255.0
        sent = (model(stamped / 255).argmax(1) == 0).numpy()
        assert sent[data.y == source].mean() > 0.95 and sent[(data.y != source) & (data.y != 0)].mean() < 0.05
    whole = x.clone()
    whole[:, CORNER[0], CORNER[1], 0] = 255.0
    assert (model(whole / 255).argmax(1).numpy() == data.y).mean() > 0.95
