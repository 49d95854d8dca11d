"""``bdscreen scan`` for detection alone: the default detectors, --no-repair, --detectors and its errors."""

import argparse
import json

import pytest

from cli.main import main
from cli.scan import options_from_args
from schemas.scan import DetectorName


def args(**given) -> argparse.Namespace:
    defaults = dict(detectors=None, divide_by=255.0, mean=[0.0], std=[1.0], bgr=False, layer=None, criterion="mean",
                    thresholds=[2.0], fine_tune=False, fine_tune_epochs=20, fine_tune_lr=0.01, holdout=0.3, seed=0,
                    no_goodnet=False, no_repair=False)
    return argparse.Namespace(**{**defaults, **given})


def test_detectors_default_to_all_and_take_a_list():
    assert options_from_args(args()).detectors == list(DetectorName)
    assert options_from_args(args(detectors="mmbd,ulp")).detectors == [DetectorName.mmbd, DetectorName.ulp]
    assert options_from_args(args(detectors="none")).detectors == []
    assert options_from_args(args(no_repair=True)).repair.enabled is False


def test_an_unknown_detector_names_the_flag_and_exits_2(fixtures, capsys):
    code = main(["scan", str(fixtures / "mnist/csaw_c_clean_label_bd_net.h5"), "--detectors", "mmbd,strip"])
    err = capsys.readouterr().err
    assert code == 2 and "--detectors" in err and "strip" in err and "Traceback" not in err


@pytest.mark.parametrize("flag", ["--no-repair"])
def test_no_repair_scans_with_the_data_free_detector_and_explains_the_verdict(fixtures, tmp_path, capsys, flag):
    code = main(["scan", str(fixtures / "ytf/sunglasses_bd_net.h5"), "--divide-by", "255", "--detectors", "mmbd",
                 flag, "--json", "--out", str(tmp_path)])
    report = json.loads(capsys.readouterr().out)
    assert report["repair"] is None and report["goodnets"] == []
    assert [f["detector"] for f in report["findings"]] == ["mmbd"]
    assert code == 1 and report["verdict"] == "backdoored" and report["suspected_targets"] == [0]
    assert report["explanation"].startswith("Backdoored") and 0.5 <= report["score"] <= 1.0
