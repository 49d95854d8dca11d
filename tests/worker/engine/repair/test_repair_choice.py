"""The repair stage end to end on a tiny planted backdoor: poisoned data never decides, equal thresholds share one
repair, and a scan in which nothing works says so."""

import hashlib
from datetime import UTC, datetime

import numpy as np
import onnxruntime as ort
import pytest
import torch
from markupsafe import escape
from repair_planted import save_npz

from cli.report import describe_report
from schemas.api import ScanPublic, ScanState
from schemas.report import ScanReport, Verdict
from schemas.scan import ScanOptions
from service.report_page import render_report
from worker.engine.preprocess import Preprocessing, model_input
from worker.engine.repair.candidates import RepairData, build_candidates
from worker.engine.repair.goodnet import GoodNet, calibrate_confidence, export_goodnet_onnx, goodnet_labels
from worker.engine.repair.layers import pruned_copy
from worker.engine.repair.pipeline import run_repair
from worker.engine.repair.sweep import SweepResult
from worker.engine.stages import ScanInputs, Stages

PRE = Preprocessing(255.0)


@pytest.fixture(scope="module")
def files(planted, tmp_path_factory):
    folder = tmp_path_factory.mktemp("planted-data")
    return {"clean": save_npz(folder / "clean.npz", planted.train), "eval": save_npz(folder / "eval.npz",
                                                                                         planted.evaluation),
            "poisoned": save_npz(folder / "poisoned.npz", planted.poisoned), "folder": folder}


def repair(planted, files, out, poisoned, **repair_options):
    torch.set_num_threads(1)
    options = ScanOptions.model_validate({"preprocessing": {"divide_by": 255}, "detectors": [],
                                          "repair": {"fine_tune_epochs": 3, **repair_options}})
    inputs = ScanInputs(planted.onnx, clean_data=files["clean"], eval_data=files["eval"], poisoned_data=poisoned)
    out.mkdir()
    return run_repair(planted.model, inputs, options, PRE, out, Stages(None), triggers=[planted.trigger])


def test_poisoned_data_never_decides(planted, files, tmp_path):
    # Other "poisoned" data: clean evaluation images all labelled 3, so every attack-success figure changes.
    decoy = files["folder"] / "decoy.npz"
    np.savez(decoy, x=planted.evaluation.x.numpy().transpose(0, 3, 1, 2), y=np.full(len(planted.evaluation), 3))
    first, _ = repair(planted, files, tmp_path / "a", files["poisoned"])
    second, _ = repair(planted, files, tmp_path / "b", decoy)
    assert first.recommended is not None and first.recommended == second.recommended
    assert first.recommendation == second.recommendation
    assert [m.attack_success_rate for m in first.models] != [m.attack_success_rate for m in second.models]
    chosen = next(m for m in first.models if m.recommended)
    digest = [hashlib.sha256((tmp_path / d / chosen.onnx_artifact).read_bytes()).hexdigest() for d in ("a", "b")]
    assert digest[0] == digest[1]
    assert chosen.attack_success_rate < 0.1 and first.baseline.attack_success_rate > 0.9  # and it works
    assert chosen.estimated_attack_success_rate < first.baseline.estimated_attack_success_rate / 2
    for m in first.models:  # every built repair was searched again, and its estimate counts that search
        if m.clean_accuracy is not None:
            assert m.fresh_search_estimated_attack_success_rate is not None
            assert m.estimated_attack_success_rate >= m.fresh_search_estimated_attack_success_rate


def test_thresholds_that_prune_the_same_channels_share_one_repair(planted):
    torch.set_num_threads(1)
    layer = "/3/Conv"
    sweep = SweepResult(layer, list(range(12)), {"decision": [1.0, 0.995, 0.95, 0.9] + [0.5] * 9})
    data = RepairData(planted.train.part(torch.arange(450)), planted.train.part(torch.arange(450, 600)), PRE)
    opts = ScanOptions.model_validate({"repair": {"thresholds": [2, 4, 10], "fine_tune": True, "method": "prune",
                                                  "fine_tune_epochs": 1, "fine_tune_learning_rate": 1e-3}}).repair
    stages = []
    built = build_candidates(planted.model, layer, sweep, data, [planted.trigger], opts,
                             lambda name: stages.append(name) or Stages(None).stage(name, 0))
    by_name = {b.name: b for b in built}
    assert stages == ["drop2", "drop10"]  # drop4 prunes drop2's two channels: not fine-tuned again
    assert by_name["drop4"].shares_repair_with == "drop2" and by_name["drop4"].model is by_name["drop2"].model
    assert by_name["drop2"].channels_pruned == by_name["drop4"].channels_pruned == 2
    assert by_name["drop10"].channels_pruned == 3 and by_name["drop10"].shares_repair_with is None


def test_when_nothing_works_the_report_says_so(planted, files, tmp_path):
    report, goodnets = repair(planted, files, tmp_path / "out", None, method="prune", thresholds=[50])
    assert report.nothing_worked and report.recommended is None
    assert report.recommendation.startswith("no repair is recommended")
    assert not any(g.recommended for g in goodnets) and not any(m.recommended for m in report.models)
    text = describe_report(ScanReport(bdscreen_version="test", model=planted.model.signature,
                                      verdict=Verdict.inconclusive, repair=report, goodnets=goodnets), None)
    assert "NOTHING WORKED" in text


def test_targets_rule_goodnet_flags_only_disagreements_from_a_suspected_target_and_onnx_agrees(planted, tmp_path):
    repaired = pruned_copy(planted.model, "/3/Conv", list(range(8)))
    goodnet = GoodNet(planted.model, repaired, targets=[0])
    x = model_input(torch.cat([planted.evaluation.x, planted.poisoned.x]), PRE, planted.model.signature.input_layout)
    labels = goodnet_labels(goodnet, x)
    with torch.no_grad():
        a, b = planted.model(x).argmax(1).numpy(), repaired(x).argmax(1).numpy()
    flagged = (a != b) & (a == 0)
    assert flagged.any() and ((a != b) & (a != 0)).any(), "both kinds of disagreement must occur"
    assert np.array_equal(labels, np.where(flagged, 4, b))
    export_goodnet_onnx(goodnet, tmp_path / "goodnet.onnx")
    session = ort.InferenceSession(str(tmp_path / "goodnet.onnx"), providers=["CPUExecutionProvider"])
    scores, onnx_labels = session.run(None, {session.get_inputs()[0].name: x.numpy()})
    assert np.array_equal(onnx_labels, labels) and np.array_equal(scores.argmax(1), labels)


def test_a_confidence_floor_drops_unsure_alarms_is_calibrated_on_stamped_inputs_and_onnx_agrees(planted, tmp_path):
    repaired = pruned_copy(planted.model, "/3/Conv", list(range(8)))
    layout = planted.model.signature.input_layout
    x = model_input(torch.cat([planted.evaluation.x, planted.poisoned.x]), PRE, layout)
    with torch.no_grad():
        probabilities = planted.model(x)
        a, b = probabilities.argmax(1).numpy(), repaired(x).argmax(1).numpy()
    sure = probabilities.max(1).values.numpy()
    alarms = (a != b) & (a == 0)
    floor = float(np.median(sure[alarms]))
    goodnet = GoodNet(planted.model, repaired, targets=[0], confidence=floor)
    labels = goodnet_labels(goodnet, x)
    kept = alarms & (sure >= floor)
    assert kept.any() and (alarms & ~kept).any(), "the floor must keep some alarms and drop others"
    assert np.array_equal(labels, np.where(kept, 4, b))
    export_goodnet_onnx(goodnet, tmp_path / "goodnet.onnx")
    session = ort.InferenceSession(str(tmp_path / "goodnet.onnx"), providers=["CPUExecutionProvider"])
    _, onnx_labels = session.run(None, {session.get_inputs()[0].name: x.numpy()})
    assert np.array_equal(onnx_labels, labels)
    # Calibrated on stamped inputs: the highest floor that still flags 99 % of what the rule flags among them.
    stamped = model_input(planted.trigger.stamp_torch(planted.evaluation.x), PRE, layout)
    plain = GoodNet(planted.model, repaired, targets=[0])
    calibrated = calibrate_confidence(plain, stamped)
    flagged = goodnet_labels(plain, stamped) == 4
    assert flagged.sum() >= 20 and 0 < calibrated <= 0.99
    assert calibrate_confidence(goodnet, stamped) == calibrated  # a floor already set plays no part
    with torch.no_grad():
        stamped_sure = planted.model(stamped).max(1).values.numpy()
    assert (stamped_sure[flagged] >= calibrated).mean() >= 0.99
    assert calibrate_confidence(plain, model_input(planted.evaluation.x[:0], PRE, layout)) == 0.0


def test_a_default_scan_finds_unlearns_and_wraps_the_planted_backdoor(planted, files, tmp_path):
    """Default options, no detector: the repair reverses the trigger itself, unlearns it, and recommends a GoodNet."""
    from worker.engine.scan import run_scan

    torch.set_num_threads(1)
    options = ScanOptions.model_validate({"preprocessing": {"divide_by": 255}, "detectors": []})
    report = run_scan(ScanInputs(planted.onnx, clean_data=files["clean"], eval_data=files["eval"],
                                 poisoned_data=files["poisoned"]), options, tmp_path)
    repair = report.repair
    assert 0 in [t.target for t in repair.triggers] and repair.triggers[0].found_by in ("repair", "detector")
    chosen = next(m for m in repair.models if m.recommended)
    assert repair.recommended == chosen.name and chosen.name in repair.recommendation
    assert chosen.attack_success_rate < 0.1 and chosen.clean_accuracy >= repair.baseline.clean_accuracy - 0.03
    goodnet = next(g for g in report.goodnets if g.recommended)
    assert goodnet.rule == "targets" and goodnet.targets == [0] and goodnet.name == chosen.name
    assert goodnet.detection_rate > 0.85 and goodnet.false_alarm_rate < 0.03
    assert goodnet.estimated_detection_rate is not None
    assert goodnet.min_confidence is not None and 0 < goodnet.min_confidence <= 0.99  # calibrated, not left at 0


def test_a_goodnet_on_the_repairs_own_suspects_says_which_classes_it_covers(planted, files, tmp_path):
    """Suspects from the repair's own search (no detector flagged one) may miss the real target: the report says that
    the GoodNet's alarms, and its estimate, cover those classes only; with a detector's trigger it does not."""
    options = ScanOptions.model_validate({"preprocessing": {"divide_by": 255}, "detectors": [],
                                          "repair": {"fine_tune_epochs": 2}})
    inputs = ScanInputs(planted.onnx, clean_data=files["clean"], eval_data=files["eval"])
    (tmp_path / "own").mkdir()
    own, goodnets = run_repair(planted.model, inputs, options, PRE, tmp_path / "own", Stages(None), triggers=None,
                               detector_ran=True)
    assert own.triggers and all(t.found_by == "repair" for t in own.triggers)
    recommended = next(g for g in goodnets if g.recommended)
    covered = ", ".join(map(str, recommended.targets))
    warning = next(w for w in own.warnings if f"alarms only where the original answers class {covered}," in w)
    text = describe_report(ScanReport(bdscreen_version="test", model=planted.model.signature,
                                      verdict=Verdict.clean, repair=own, goodnets=goodnets), None)
    assert f"warning: {warning}" in text  # the CLI table shows it, not only the JSON
    scan = ScanPublic(id="s", state=ScanState.succeeded, progress=1.0, created_at=datetime.now(UTC),
                      report=ScanReport(bdscreen_version="test", model=planted.model.signature, verdict=Verdict.clean,
                                        repair=own, goodnets=goodnets))
    page = render_report(scan, None, "planted.onnx")  # type: ignore[arg-type]  # no pictures: no store needed
    assert f"<li>Warning: {escape(warning)}</li>" in page  # and the report page
    given, _ = repair(planted, files, tmp_path / "given", None)
    assert not any("alarms only where" in w for w in given.warnings)
