"""The bdscreen command line: inspect, convert and scan, with their exit codes and messages."""

import json
import pickle
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch

from cli.main import main
from worker.engine.formats.keras_h5 import read_keras_h5


def test_inspect_prints_the_signature_and_layers(fixtures, capsys):
    assert main(["inspect", str(fixtures / "ytf/sunglasses_bd_net.h5")]) == 0
    out = capsys.readouterr().out
    assert "keras-h5 (Keras 2.4.0)" in out and "[55, 47, 3] (NHWC)" in out and "1283" in out
    assert any(line.split()[:2] == ["conv_3", "Conv2D"] and "60" in line.split() for line in out.splitlines())


def test_inspect_json_of_weights_only_file_with_architecture(fixtures, capsys):
    code = main(["inspect", str(fixtures / "ytf/lab3_bd_weights.h5"), "--architecture",
                 str(fixtures / "ytf/deepid_architecture.json"), "--json"])
    report = json.loads(capsys.readouterr().out)
    assert code == 0 and report["accepted"] and report["signature"]["producer"] == "Keras 2.3.1"
    assert [layer["name"] for layer in report["signature"]["layers"]][:3] == ["input", "conv_1", "pool_1"]


def test_inspect_refuses_the_lambda_goodnet_with_exit_code_2(fixtures, capsys):
    assert main(["inspect", str(fixtures / "ytf/goodnet_with_lambda.h5"), "--json"]) == 2
    captured = capsys.readouterr()
    report = json.loads(captured.out)
    assert not report["accepted"] and report["refused_category"] == "refused-model"
    assert "refused-model" in captured.err and "y_reclasify" in captured.err


def test_inspect_refuses_a_pickle_renamed_to_h5(tmp_path, capsys):
    path = tmp_path / "model.h5"
    path.write_bytes(pickle.dumps({"weights": [1, 2, 3]}))
    assert main(["inspect", str(path)]) == 2
    assert "pickle" in capsys.readouterr().err


def test_convert_writes_onnx_that_matches_the_keras_reference(fixtures, tmp_path, reference_outputs):
    out = tmp_path / "sunglasses.onnx"
    assert main(["convert", str(fixtures / "ytf/sunglasses_bd_net.h5"), "--to", "onnx", "-o", str(out)]) == 0
    x, expected = reference_outputs("sunglasses_bd_net")
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    got = session.run(None, {session.get_inputs()[0].name: x})[0]
    assert np.abs(got - expected).max() <= 1e-5 and np.array_equal(got.argmax(1), expected.argmax(1))


def test_convert_of_unreadable_file_exits_2_with_reason(tmp_path, capsys):
    path = tmp_path / "empty.h5"
    path.write_bytes(b"")
    assert main(["convert", str(path), "-o", str(tmp_path / "x.onnx")]) == 2
    assert "empty" in capsys.readouterr().err
    assert not (tmp_path / "x.onnx").exists()


def test_missing_file_is_a_usage_error():
    with pytest.raises(SystemExit) as info:
        main(["inspect", "/nonexistent/model.h5"])
    assert info.value.code == 2


def test_local_scan_json_has_the_documented_fields(fixtures, clean_mnist, tmp_path, capsys):
    code = main(["scan", str(fixtures / "mnist/csaw_c_clean_label_bd_net.h5"), "--clean-data", str(clean_mnist),
                 "--divide-by", "255", "--detectors", "none", "--thresholds", "2,10", "--local", "--json",
                 "--out", str(tmp_path)])
    report = json.loads(capsys.readouterr().out)
    assert code == 3 and report["verdict"] == "inconclusive"  # no detector ran: no claim either way
    assert report == json.loads((tmp_path / "report.json").read_text())
    repair = report["repair"]
    assert {"layer", "criterion", "baseline", "curve", "models"} <= set(repair)
    assert set(repair["curve"][0]) >= {"channels_pruned", "clean_accuracy", "attack_success_rate"}
    assert set(repair["models"][0]) >= {"threshold", "channels_pruned", "fine_tuned", "clean_accuracy",
                                        "attack_success_rate", "artifact"}
    assert set(report["goodnets"][0]) >= {"threshold", "clean_accuracy", "attack_success_rate", "detection_rate",
                                          "false_alarm_rate", "artifact"}
    assert all(set(a) >= {"name", "bytes", "sha256"} for a in report["artifacts"])


def test_scan_with_bad_option_exits_2(fixtures, clean_mnist, capsys):
    code = main(["scan", str(fixtures / "mnist/csaw_c_clean_label_bd_net.h5"), "--clean-data", str(clean_mnist),
                 "--detectors", "none", "--layer", "dense_1"])
    assert code == 2 and "bad-option" in capsys.readouterr().err


def test_installed_console_script_runs(fixtures):
    exe = shutil.which("bdscreen") or str(Path(sys.executable).parent / "bdscreen")
    result = subprocess.run([exe, "inspect", str(fixtures / "mnist/csaw_c_clean_label_bd_net.h5"), "--json"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["signature"]["num_classes"] == 10


def test_repaired_model_loads_back_with_the_same_layer_names(fixtures, clean_mnist, tmp_path):
    assert main(["scan", str(fixtures / "mnist/csaw_c_clean_label_bd_net.h5"), "--clean-data", str(clean_mnist),
                 "--divide-by", "255", "--detectors", "none", "--thresholds", "2", "--no-goodnet",
                 "--out", str(tmp_path)]) == 3
    original = read_keras_h5(fixtures / "mnist/csaw_c_clean_label_bd_net.h5")
    repaired = read_keras_h5(tmp_path / "repaired_drop2.h5")
    assert [n.name for n in repaired.nodes] == [n.name for n in original.nodes]
    assert not torch.equal(repaired.layer("conv2d_2").weight, original.layer("conv2d_2").weight)
