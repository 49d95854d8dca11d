"""``bdscreen scan`` for detection alone: the default detectors, --no-repair, --detectors and its errors."""

import argparse
import json

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
    assert code == 2 and "--detectors" in err and "Traceback" not in err


def test_no_repair_detects_only_and_explains_the_verdict(fixtures, clean_mnist, tmp_path, capsys):
    # The CSAW clean-label BadNet: flagged (as bench.detect_fixtures reports), and clean data given but no repair.
    # Trigger reversal is left out to keep the test short, so linf has no trigger to stamp.
    code = main(["scan", str(fixtures / "mnist/csaw_c_clean_label_bd_net.h5"), "--clean-data", str(clean_mnist),
                 "--divide-by", "255", "--detectors", "mmbd,linf,ulp", "--no-repair", "--json", "--out",
                 str(tmp_path)])
    report = json.loads(capsys.readouterr().out)
    assert report["repair"] is None and report["goodnets"] == []
    assert [f["detector"] for f in report["findings"]] == ["mmbd", "linf", "ulp"]
    assert code == 1 and report["verdict"] == "backdoored" and report["score"] >= report["threshold"]
    assert report["explanation"].startswith("Backdoored") and "ulp" in report["explanation"]
    linf = next(f for f in report["findings"] if f["detector"] == "linf")
    assert not linf["applicable"] and "trigger" in linf["reason"]  # no trigger detector ran: not applicable
