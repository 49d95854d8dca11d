"""The engine end to end on the real MNIST BadNet fixture, in-process."""

import json
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch

from schemas.scan import RepairOptions, ScanOptions
from worker.core.errors import DataError, OptionError
from worker.engine.formats.keras_h5 import read_keras_h5
from worker.engine.scan import ScanInputs, run_scan, sha256_file


@pytest.fixture(scope="module")
def mnist_files(reference_inputs, tmp_path_factory) -> dict[str, Path]:
    from worker.engine.data import read_mnist_idx

    fixtures = Path(__file__).resolve().parents[3].parent / "shared/fixtures"
    _, labels = read_mnist_idx(fixtures / "mnist/t10k-images-idx3-ubyte.gz",
                               fixtures / "mnist/t10k-labels-idx1-ubyte.gz", limit=2000)
    images = reference_inputs["mnist"].astype(np.uint8)
    folder = tmp_path_factory.mktemp("mnist")
    np.savez(folder / "clean.npz", x=images[:400], y=labels[:400])
    stamped = images[1000:1200].copy()
    stamped[:, 23:27, 23:27] = 255
    np.savez(folder / "poisoned.npz", x=stamped, y=np.zeros(200, dtype=np.int64))
    np.savez(folder / "faces.npz", x=np.zeros((20, 55, 47, 3), np.uint8), y=np.zeros(20, np.int64))
    return {"model": fixtures / "mnist/csaw_c_clean_label_bd_net.h5", "clean": folder / "clean.npz",
            "poisoned": folder / "poisoned.npz", "faces": folder / "faces.npz"}


def _options(**repair) -> ScanOptions:
    """The pruning pipeline alone (method prune): the default repair (unlearning) is tested in engine/repair."""
    return ScanOptions.model_validate({"preprocessing": {"divide_by": 255}, "detectors": [],
                                       "repair": {"thresholds": [2, 4, 100], "method": "prune", **repair}})


def test_scan_reports_repairs_and_writes_every_artifact(mnist_files, tmp_path):
    stages = []
    report = run_scan(ScanInputs(mnist_files["model"], clean_data=mnist_files["clean"],
                                 poisoned_data=mnist_files["poisoned"]), _options(), tmp_path,
                      progress=lambda stage, fraction: stages.append((stage, fraction)))
    repair = report.repair
    assert repair.layer == "conv2d_2" and repair.criterion == "mean"
    assert (repair.split.decision_samples, repair.split.evaluation_samples) == (280, 120)
    assert len(repair.curve) == 5 and repair.curve[0].channels_pruned == 0
    assert 0.8 < repair.baseline.clean_accuracy <= 1 and repair.baseline.attack_success_rate is not None
    reached = [m for m in repair.models if m.reached]
    assert [m.threshold for m in repair.models] == [2, 4, 100]
    assert not repair.models[-1].reached and repair.models[-1].artifact is None
    for m in reached:
        drop = repair.curve[0].decision_accuracy - repair.curve[m.channels_pruned].decision_accuracy
        assert drop * 100 >= m.threshold - 1e-9
    # Pruning alone does not halve this model's reversed-trigger estimate: at most one GoodNet is recommended,
    # and the report says which and why, or that none is.
    assert sum(g.recommended for g in report.goodnets) <= 1 and repair.recommendation
    names = {a.name: a for a in report.artifacts}
    assert {"repaired_drop2.h5", "repaired_drop2.onnx", "goodnet_drop2.onnx", "repair_curve.png"} <= set(names)
    for artifact in report.artifacts:
        assert sha256_file(tmp_path / artifact.name) == artifact.sha256
    assert json.loads((tmp_path / "report.json").read_text())["repair"]["layer"] == "conv2d_2"
    assert [s for s, _ in stages][0] == "load" and stages[-1] == ("done", 1.0)
    assert [f for _, f in stages] == sorted(f for _, f in stages)


def test_repaired_keras_file_and_its_onnx_are_the_pruned_model(mnist_files, reference_inputs, tmp_path):
    report = run_scan(ScanInputs(mnist_files["model"], clean_data=mnist_files["clean"]), _options(), tmp_path)
    model = report.repair.models[0]
    repaired = read_keras_h5(tmp_path / model.artifact)
    conv = repaired.layer(report.repair.layer)
    pruned = report.repair.order[:model.channels_pruned]
    assert torch.count_nonzero(conv.weight[pruned]) == 0
    x = reference_inputs["mnist"][:64] / 255.0
    session = ort.InferenceSession(str(tmp_path / model.onnx_artifact), providers=["CPUExecutionProvider"])
    with torch.no_grad():
        assert np.abs(session.run(None, {"input": x})[0] - repaired(torch.from_numpy(x)).numpy()).max() < 1e-5


def test_fine_pruning_marks_models_fine_tuned(mnist_files, tmp_path):
    report = run_scan(ScanInputs(mnist_files["model"], clean_data=mnist_files["clean"]),
                      _options(fine_tune=True, fine_tune_epochs=1, thresholds=[4]), tmp_path)
    assert all(m.fine_tuned and m.fine_tune_epochs == 1 for m in report.repair.models if m.reached)


def test_unknown_layer_is_an_option_error(mnist_files, tmp_path):
    with pytest.raises(OptionError, match="conv_3"):
        run_scan(ScanInputs(mnist_files["model"], clean_data=mnist_files["clean"]), _options(layer="conv_3"),
                 tmp_path)


def test_data_that_does_not_fit_names_both_shapes(mnist_files, tmp_path):
    with pytest.raises(DataError, match=r"\(55, 47, 3\).*\(28, 28, 1\)"):
        run_scan(ScanInputs(mnist_files["model"], clean_data=mnist_files["faces"]), _options(), tmp_path)


def test_poisoned_data_without_clean_data_is_refused(mnist_files, tmp_path):
    with pytest.raises(OptionError, match="clean data"):
        run_scan(ScanInputs(mnist_files["model"], poisoned_data=mnist_files["poisoned"]), _options(), tmp_path)


def test_repair_options_reject_nonsense_thresholds():
    with pytest.raises(ValueError):
        RepairOptions(thresholds=[0])


def test_poisoned_data_never_changes_a_decision(mnist_files, tmp_path):
    """Only reported figures may depend on the poisoned data: swap it and every choice stays the same."""
    other = tmp_path / "other_poison.npz"
    data = np.load(mnist_files["poisoned"])
    np.savez(other, x=255 - data["x"], y=np.full_like(data["y"], 3))
    reports = [run_scan(ScanInputs(mnist_files["model"], clean_data=mnist_files["clean"], poisoned_data=p),
                        _options(), tmp_path / p.stem) for p in (mnist_files["poisoned"], other)]
    first, second = (r.repair for r in reports)
    assert first.order == second.order
    assert [m.channels_pruned for m in first.models] == [m.channels_pruned for m in second.models]
    assert [g.recommended for g in reports[0].goodnets] == [g.recommended for g in reports[1].goodnets]
    assert [p.clean_accuracy for p in first.curve] == [p.clean_accuracy for p in second.curve]
    assert [p.attack_success_rate for p in first.curve] != [p.attack_success_rate for p in second.curve]


class _CrashingDetector:
    """A detector whose method raises, as a bug in a real one would."""

    name = "ulp"
    needs_clean_data = False

    def applicable(self, context) -> str | None:
        return None

    def detect(self, context):
        raise RuntimeError("boom")


def test_a_crashed_detector_is_an_error_and_exits_2_not_inconclusive(mnist_files, tmp_path, monkeypatch):
    import worker.engine.scan as scan_module
    from cli.report import exit_code

    monkeypatch.setitem(scan_module.DETECTORS, "ulp", _CrashingDetector())
    options = ScanOptions.model_validate({"preprocessing": {"divide_by": 255}, "detectors": ["ulp"],
                                          "repair": {"enabled": False}})
    report = run_scan(ScanInputs(mnist_files["model"]), options, tmp_path)
    assert [(e.stage, e.message) for e in report.errors] == [("detect:ulp", "RuntimeError: boom")]
    assert report.findings == [] and report.verdict.value == "inconclusive"
    assert exit_code(report) == 2


def test_a_detector_that_needs_data_says_so_on_a_data_free_scan(mnist_files, tmp_path, monkeypatch):
    import worker.engine.scan as scan_module

    needy = _CrashingDetector()
    needy.needs_clean_data = True
    monkeypatch.setitem(scan_module.DETECTORS, "ulp", needy)
    options = ScanOptions.model_validate({"preprocessing": {"divide_by": 255}, "detectors": ["ulp"]})
    report = run_scan(ScanInputs(mnist_files["model"]), options, tmp_path)
    assert report.errors == [] and not report.findings[0].applicable
    assert "needs clean data" in report.findings[0].reason
