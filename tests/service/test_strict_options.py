"""Strict options: unknown keys and work that cannot run are refused at POST, in the API's words; the scan
shows the options it runs with."""

import json

import pytest
from conftest import post_scan, wait_scan

from service.options import api_message, effective_options, parse_options
from worker.core.errors import OptionError


def test_an_unknown_key_names_itself_and_the_nearest_known_one():
    with pytest.raises(OptionError, match=r"unknown option options.preprocesing; did you mean 'preprocessing'\?"):
        parse_options(b'{"preprocesing": {"divide_by": 255}}')
    with pytest.raises(OptionError, match=r"options.repair.treshold; did you mean 'thresholds'"):
        parse_options(b'{"repair": {"treshold": [2]}}')
    with pytest.raises(OptionError, match="options.preprocessing.mean: "):
        parse_options(b'{"preprocessing": {"mean": "zero"}}')


def test_repair_asked_for_without_clean_data_is_refused_and_defaults_are_switched_off():
    with pytest.raises(OptionError, match=r"options.repair.fine_tune\) asked for, but no 'clean_data' file"):
        effective_options(parse_options(b'{"repair": {"fine_tune": true}}'), {"model"})
    with pytest.raises(OptionError, match=r"options.goodnet"):
        effective_options(parse_options(b'{"goodnet": true}'), {"model"})
    detection_only = effective_options(parse_options(b'{"repair": {"enabled": false}}'), {"model"})
    assert not detection_only.repair.enabled and not detection_only.goodnet
    assert effective_options(parse_options(b"{}"), {"model", "clean_data"}).repair.enabled


def test_engine_messages_are_put_in_api_words():
    sha = "ab" * 32
    uploads = [{"field": "clean_data", "filename": "faces.npz", "sha256": sha}]
    message = f"/srv/bdscreen/blobs/ab/{sha} has 5 samples; give more --clean-data or a separate --eval-data."
    expected = "'faces.npz' has 5 samples; give more 'clean_data' (faces.npz) or a separate 'eval_data'."
    assert api_message(message, uploads) == expected


def test_post_refuses_a_typo_and_a_repair_without_clean_data(deployment, faces):
    with deployment.client(deployment.keys["alice"]) as client:
        typo = post_scan(client, faces["model"], '{"preprocesing": {"divide_by": 255}}', clean_data=faces["clean"])
        assert typo.status_code == 422 and typo.json()["category"] == "bad-option"
        assert "options.preprocesing; did you mean 'preprocessing'" in typo.json()["detail"]
        repair = post_scan(client, faces["model"], '{"repair": {"fine_tune": true}, "detectors": []}')
        assert repair.status_code == 422 and "'clean_data'" in repair.json()["detail"]


def test_the_scan_echoes_the_options_it_runs_with(deployment, faces):
    options = {"preprocessing": {"divide_by": 255}, "detectors": []}
    with deployment.client(deployment.keys["alice"]) as client:
        created = post_scan(client, faces["model"], json.dumps(options))
        assert created.status_code == 202, created.text
        echoed = created.json()["options"]
        assert echoed["preprocessing"]["divide_by"] == 255 and echoed["detectors"] == []
        assert echoed["repair"]["enabled"] is False and echoed["goodnet"] is False  # no clean data: not run
        scan = wait_scan(client, created.json()["id"])
        assert scan["state"] == "succeeded" and scan["options"] == echoed


def test_checks_that_need_the_model_run_at_post_and_speak_api(deployment, faces, tmp_path):
    import numpy as np

    few = tmp_path / "five_faces.npz"
    with np.load(faces["clean"]) as data:
        np.savez(few, x=data["x"][:5], y=data["y"][:5])
    with deployment.client(deployment.keys["alice"]) as client:
        too_few = post_scan(client, faces["model"], '{"preprocessing": {"divide_by": 255}, "detectors": []}',
                            clean_data=few)
        assert too_few.status_code == 422 and too_few.json()["category"] == "bad-data", too_few.text
        assert "'clean_data' (five_faces.npz) has 5 samples" in too_few.json()["detail"]
        mean = post_scan(client, faces["model"], '{"preprocessing": {"mean": [0, 0]}, "detectors": []}')
        assert mean.status_code == 422 and "options.preprocessing.mean" in mean.json()["detail"], mean.text
        named = post_scan(client, faces["model"], '{"detectors": ["ulp"]}')
        assert named.status_code == 422 and "options.detectors names detectors" in named.json()["detail"]
        assert "--" not in too_few.json()["detail"] + mean.json()["detail"] + named.json()["detail"]
