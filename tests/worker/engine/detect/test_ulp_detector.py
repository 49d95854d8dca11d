"""The ULP detector on real models: it judges the models a bank fits and says why it cannot judge the others."""

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from schemas.models import InputLayout, ModelFormat, ModelSignature
from worker.core.bankfiles import SHIPPED_BANKS, LitmusBank, bank_folders, find_banks, save_bank
from worker.engine.detect.ulp import detect_ulp, litmus_features, misfit, ulp_score
from worker.engine.formats import read_model
from worker.engine.preprocess import Preprocessing, model_input
from worker.zoo.architectures import build_family

MNIST_BANK = SHIPPED_BANKS / "mnist-28x28x1.h5"


def _signature(shape: list[int], layout: InputLayout, classes: int = 10) -> ModelSignature:
    return ModelSignature(format=ModelFormat.onnx, input_name="x", input_shape=shape, input_layout=layout,
                          num_classes=classes, layers=[])


def _bank(shape: tuple[int, int, int] = (28, 28, 1), classes: int = 10) -> LitmusBank:
    patterns = np.random.default_rng(0).uniform(0, 255, (2, *shape)).astype(np.float32)
    return LitmusBank("toy", patterns, np.zeros((2, 2 * classes), np.float32), np.zeros(2, np.float32), classes,
                      0.5, 0.05, 0.9, 0.0)


def test_the_shipped_bank_is_small_and_valid() -> None:
    assert MNIST_BANK.stat().st_size < 2 * 1024 * 1024
    listing = find_banks([SHIPPED_BANKS])
    assert not listing.refused
    bank = dict((path.name, bank) for path, bank in listing.banks)["mnist-28x28x1.h5"]
    assert bank.input_shape == (28, 28, 1) and bank.num_classes == 10 and len(bank.patterns) == 10
    assert bank.validation_fpr <= bank.target_fpr == 0.05
    # The shipped bank was built before the module moved from worker.detect to worker.zoo (same code).
    assert bank.provenance["command"] in (".venv/bin/python -m worker.zoo.build_mnist_bank",
                                          ".venv/bin/python -m worker.detect.build_mnist_bank")


def test_a_real_mnist_badnet_is_judged_with_the_shipped_bank(fixtures: Path) -> None:
    model = read_model(fixtures / "mnist" / "csaw_c_clean_label_bd_net.h5")
    finding = detect_ulp(model, Preprocessing(255.0))
    assert finding.detector == "ulp" and finding.applicable and finding.bank == "mnist-28x28x1"
    # The README reports this clean-label BadNet flagged by the shipped bank (score 0.998, threshold 0.092).
    assert finding.score >= finding.threshold and finding.score > 0.9
    assert "ULP score" in finding.reason and "at or above" in finding.reason


def test_a_face_model_with_1283_classes_is_not_applicable_and_says_why(fixtures: Path) -> None:
    model = read_model(fixtures / "ytf" / "sunglasses_bd_net.h5")
    finding = detect_ulp(model, Preprocessing(255.0))
    assert not finding.applicable and finding.score is None and finding.threshold is None
    assert finding.reason.startswith("No litmus bank fits this model (55x47x3 inputs with 1283 classes)")
    assert "mnist-28x28x1 (28x28x1, 10 classes)" in finding.reason
    assert "bdscreen banks train" in finding.reason


@pytest.mark.parametrize(("shape", "layout", "classes", "why"), [
    ([28, 28, 1], InputLayout.nhwc, 10, None),
    ([1, 28, 28], InputLayout.nchw, 10, None),
    ([784], InputLayout.flat, 10, None),
    ([28, 28, 3], InputLayout.nhwc, 10, "it is for 28x28x1 inputs"),
    ([28, 28, 1], InputLayout.nhwc, 43, "it is for 10 classes"),
    ([28, 1, 28], InputLayout.nchw, 10, "it is for 28x28x1 inputs"),
])
def test_a_bank_fits_by_image_size_in_any_layout_and_by_classes(shape, layout, classes, why) -> None:
    assert misfit(_bank(), _signature(shape, layout, classes)) == why


def test_patterns_reach_an_nchw_model_as_they_reach_the_same_model_taking_nhwc() -> None:
    torch.manual_seed(0)
    core = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 4, 5))

    class ChannelsLast(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return core(x.permute(0, 3, 1, 2))

    patterns = torch.rand(2, 8, 6, 3) * 255
    pre = Preprocessing(255.0, (0.4, 0.5, 0.6), (0.2, 0.25, 0.3))
    torch.testing.assert_close(litmus_features(patterns, core, InputLayout.nchw, pre),
                               litmus_features(patterns, ChannelsLast(), InputLayout.nhwc, pre))


def test_with_a_logit_spread_a_model_is_read_on_the_banks_scale_whatever_its_own() -> None:
    # A tanh network answers with small, bounded logits; scaled to the bank zoo's spread, it is read like a model of the
    # zoo with the same ranking of answers, instead of as an odd model (stop 24: clean tanh LeNets scored up to 0.93).
    torch.manual_seed(0)
    core = nn.Sequential(nn.Flatten(), nn.Linear(8 * 6, 5))
    small = nn.Sequential(core, nn.Tanh())  # the same answers' order, squeezed into (-1, 1)
    patterns = torch.rand(3, 8, 6, 1) * 255
    pre = Preprocessing(255.0)
    torch.testing.assert_close(litmus_features(patterns, core, InputLayout.nhwc, pre, 4.0, spread=8.0),
                               litmus_features(patterns, nn.Sequential(core, _Times(0.25)), InputLayout.nhwc, pre, 4.0,
                                               spread=8.0))
    raw, scaled = (litmus_features(patterns, small, InputLayout.nhwc, pre, 4.0, spread) for spread in (None, 8.0))
    assert raw.reshape(3, 5).max(1).values.max() < 0.3 < scaled.reshape(3, 5).max(1).values.min()  # flat -> decided
    logits = small(model_input(patterns, pre, InputLayout.nhwc))
    assert torch.equal(scaled.reshape(3, 5).argmax(1), logits.argmax(1))


class _Times(nn.Module):
    def __init__(self, factor: float) -> None:
        super().__init__()
        self.factor = factor

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.factor


def test_the_shipped_bank_reads_models_on_its_zoos_logit_spread() -> None:
    bank = find_banks([SHIPPED_BANKS]).banks[0][1]
    assert bank.logit_spread is not None and 4 < bank.logit_spread < 30
    assert bank.provenance["logit_spread_measured_on"]  # where the figure comes from is said


def test_user_bank_folders_come_from_bdscreen_banks(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("BDSCREEN_BANKS", f"{tmp_path / 'a'}:{tmp_path / 'b'}")
    assert bank_folders() == [SHIPPED_BANKS, tmp_path / "a", tmp_path / "b"]
    monkeypatch.delenv("BDSCREEN_BANKS")
    assert bank_folders() == [SHIPPED_BANKS]


def test_a_refused_user_bank_is_reported_and_the_others_still_serve(monkeypatch: pytest.MonkeyPatch,
                                                                      tmp_path: Path, fixtures: Path) -> None:
    (tmp_path / "broken.h5").write_bytes(b"\x89HDF\r\n\x1a\n" + b"\0" * 64)
    save_bank(_bank((55, 47, 3), 7), tmp_path / "faces.h5")
    monkeypatch.setenv("BDSCREEN_BANKS", str(tmp_path))
    listing = find_banks()
    assert [path.name for path, _ in listing.refused] == ["broken.h5"]
    model = read_model(fixtures / "ytf" / "sunglasses_bd_net.h5")
    finding = detect_ulp(model, Preprocessing(255.0))
    assert not finding.applicable
    assert "toy (55x47x3, 7 classes)" in finding.reason and "broken.h5" in finding.reason


def test_the_score_is_repeatable_and_is_what_detect_ulp_reports(fixtures: Path) -> None:
    model = read_model(fixtures / "mnist" / "csaw_c_clean_label_bd_net.h5")
    bank = find_banks([SHIPPED_BANKS]).banks[0][1]
    first = ulp_score(bank, model, Preprocessing(255.0))
    assert ulp_score(bank, model, Preprocessing(255.0)) == first
    assert detect_ulp(model, Preprocessing(255.0), banks=[bank]).score == first


def _onnx_family(family: str, path: Path) -> nn.Module:
    wrapped = nn.Sequential(build_family(family, (28, 28, 1), 10), nn.Softmax(dim=1)).eval()
    torch.onnx.export(wrapped, torch.zeros(1, 1, 28, 28), path, dynamo=False)
    return read_model(path)


@pytest.mark.parametrize(("family", "why"), [
    ("mlp", "it has no convolutions (a dense network) and they all convolve"),
    ("lenet-tanh", "it uses the non-linearities tanh and they use only relu"),
    ("cnn1-bn", None),
])
def test_the_finding_says_whether_the_model_is_like_the_banks_zoo(family: str, why: str | None,
                                                                  tmp_path: Path) -> None:
    # The shipped bank was learned on ReLU CNNs; it still runs on other architectures (as a gate it lost as much as
    # it won), but the finding says the score is less reliable there.
    finding = detect_ulp(_onnx_family(family, tmp_path / "m.onnx"), Preprocessing(255.0))
    assert finding.applicable and finding.score is not None
    assert finding.evidence["architecture_like_zoo"] is (why is None)
    if why is None:
        assert "unlike" not in finding.reason and "reliable only for architectures like its zoo's" in finding.reason
    else:
        assert f"This model's architecture is unlike the zoo's: {why}. The score is less reliable" in finding.reason


def test_a_bank_learned_on_the_models_architecture_is_preferred(tmp_path: Path) -> None:
    relu_cnns = [{"convolutional": True, "activations": ["relu"]}]
    dense = [{"convolutional": False, "activations": ["relu"]}]
    better_tested = _bank()
    better_tested.name, better_tested.test_auc, better_tested.provenance = "cnns", 0.99, {"architectures": relu_cnns}
    own = _bank()
    own.name, own.test_auc, own.provenance = "own", 0.80, {"architectures": dense}
    model = _onnx_family("mlp", tmp_path / "m.onnx")
    assert detect_ulp(model, Preprocessing(255.0), banks=[better_tested, own]).bank == "own"
    unrecorded = _bank()  # a bank that records no architectures: nothing said, ranked by its test AUC
    unrecorded.test_auc = 0.99
    finding = detect_ulp(model, Preprocessing(255.0), banks=[unrecorded, own])
    assert finding.bank == "own" and finding.evidence["architecture_like_zoo"] is True
    alone = detect_ulp(model, Preprocessing(255.0), banks=[unrecorded])
    assert alone.evidence["architecture_like_zoo"] is None and "unlike" not in alone.reason
