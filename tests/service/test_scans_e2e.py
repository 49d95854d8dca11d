"""The service end to end on real parts: gateway (uvicorn), Celery workers, Redis, the real sunglasses BadNet."""

import base64
import hashlib
import re
import subprocess
import sys
import time

import numpy as np
import onnxruntime as ort
from conftest import ROOT, post_scan, wait_scan

from schemas.report import ScanReport, Verdict

LONG_FACE_OPTIONS = ('{"preprocessing": {"divide_by": 255}, "detectors": [], '
                     '"repair": {"thresholds": [2, 10], "method": "prune", "fine_tune": true, '
                     '"fine_tune_epochs": 500}}')


def test_ci_client_scans_the_badnet_and_downloads_a_goodnet_that_runs_in_onnxruntime(deployment, faces, tmp_path):
    out = tmp_path / "artifacts"
    run = subprocess.run(
        [sys.executable, "-m", "cli.main", "scan", str(faces["model"]), "--server", deployment.url,
         "--api-key", deployment.keys["alice"], "--clean-data", str(faces["clean"]), "--divide-by", "255",
         "--detectors", "none", "--thresholds", "2,10", "--repair-method", "prune", "--json",
         "--download", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=240)
    assert run.returncode == 3, run.stderr  # no detector asked for: inconclusive
    report = ScanReport.model_validate_json(run.stdout)
    assert report.verdict == Verdict.inconclusive and report.repair.layer == "conv_3"
    assert report.repair.split.decision_samples == 28 and report.repair.split.evaluation_samples == 12
    assert {a.name for a in report.artifacts} | {"report.json"} == {p.name for p in out.iterdir()}
    # Followed live: which stages a poll catches depends on the machine's speed (a worker may have taken the scan
    # before the POST answered), so only the first report (accepted: queued or running) and the last are certain.
    assert re.search(r"scan [0-9a-f]+ (queued|running)", run.stderr) and "[100%] done" in run.stderr

    from worker.engine.data import read_image_folder

    x, _ = read_image_folder(faces["samples"])
    # Pruning alone removes no trigger, so none is recommended; every GoodNet is still one ONNX file that runs.
    goodnet = report.goodnets[0]
    session = ort.InferenceSession(str(out / goodnet.artifact), providers=["CPUExecutionProvider"])
    outputs = dict(zip([o.name for o in session.get_outputs()],
                       session.run(None, {session.get_inputs()[0].name: (x / 255).astype(np.float32)}), strict=True))
    assert outputs["scores"].shape == (15, 1284)
    assert np.array_equal(outputs["label"], outputs["scores"].argmax(1))


def test_artifacts_stream_with_length_and_sha256_of_the_report(deployment, faces):
    with deployment.client(deployment.keys["alice"]) as client:
        scan = wait_scan(client, post_scan(client, faces["model"], clean_data=faces["clean"]).json()["id"])
        scans = client.get("/v1/scans").raise_for_status().json()
        report = client.get(f"/v1/scans/{scan['id']}").json()["report"]
        artifact = next(a for a in report["artifacts"] if a["name"].startswith("goodnet"))
        response = client.get(f"/v1/scans/{scan['id']}/artifacts/{artifact['name']}")
        missing = client.get(f"/v1/scans/{scan['id']}/artifacts/nope.onnx")
    assert response.status_code == 200 and int(response.headers["content-length"]) == artifact["bytes"]
    assert hashlib.sha256(response.content).hexdigest() == artifact["sha256"]
    assert response.headers["etag"] == f'"{artifact["sha256"]}"'
    digest = base64.b64encode(bytes.fromhex(artifact["sha256"])).decode()
    assert response.headers["repr-digest"] == f"sha-256=:{digest}:"
    assert missing.status_code == 404 and missing.json()["type"] == "urn:bdscreen:problem:not-found"
    assert scans["count"] >= 1 and scans["data"][0]["report"] is None  # lists carry no reports


def test_report_is_the_one_the_local_scan_makes(deployment, faces, tmp_path):
    from schemas.scan import ScanOptions
    from worker.engine.scan import ScanInputs, run_scan

    with deployment.client(deployment.keys["alice"]) as client:
        created = post_scan(client, faces["mnist_model"], '{"detectors": []}')
        assert created.status_code == 202 and created.headers["location"] == f"/v1/scans/{created.json()['id']}"
        scan = wait_scan(client, created.json()["id"])
    local = run_scan(ScanInputs(faces["mnist_model"]), ScanOptions(detectors=[]), tmp_path)
    remote = ScanReport.model_validate(scan["report"])
    assert scan["state"] == "succeeded" and scan["progress"] == 1 and scan["attempts"] == 1
    assert {"queued", "running", "load"} <= set(scan["timings"])
    assert remote.model_dump(exclude={"timings"}) == local.model_dump(exclude={"timings"})


def test_another_keys_scan_is_a_404_and_lists_hold_only_your_scans(deployment, faces):
    with deployment.client(deployment.keys["alice"]) as alice, deployment.client(deployment.keys["bob"]) as bob:
        older_id = post_scan(alice, faces["mnist_model"], '{"detectors": []}').json()["id"]
        scan_id = post_scan(alice, faces["mnist_model"], '{"detectors": []}').json()["id"]
        seen_by_bob = bob.get(f"/v1/scans/{scan_id}")
        deleted_by_bob = bob.delete(f"/v1/scans/{scan_id}")
        bobs = bob.get("/v1/scans").json()
        alices = alice.get("/v1/scans", params={"limit": 1}).json()
        wait_scan(alice, older_id)
        wait_scan(alice, scan_id)
    with deployment.client() as anonymous, deployment.client("bds_wrong") as wrong:
        assert anonymous.get("/v1/scans").status_code == 401 and wrong.get("/v1/scans").status_code == 401
        assert anonymous.get("/v1/scans").headers["www-authenticate"] == "Bearer"
    assert seen_by_bob.status_code == 404 and deleted_by_bob.status_code == 404
    assert not {scan_id, older_id} & {s["id"] for s in bobs["data"]}
    assert [s["id"] for s in alices["data"]] == [scan_id] and alices["count"] >= 2  # newest first, paginated


def test_a_retried_post_with_the_same_idempotency_key_returns_the_same_scan(deployment, faces):
    with deployment.client(deployment.keys["alice"]) as client:
        headers = {"Idempotency-Key": "ci-run-42"}
        first = client.post("/v1/scans", headers=headers, files={"model": faces["mnist_model"].read_bytes()},
                            data={"options": '{"detectors": []}'})
        again = client.post("/scan", headers=headers, files={"model": faces["mnist_model"].read_bytes()},
                            data={"options": '{"detectors": []}'})
        count = client.get("/v1/scans").json()["count"]
        again_count = client.get("/v1/scans").json()["count"]
    assert first.status_code == again.status_code == 202
    assert first.json()["id"] == again.json()["id"] and again.headers["idempotent-replayed"] == "true"
    assert count == again_count


def test_the_same_idempotency_key_with_other_options_is_refused(deployment, faces):
    with deployment.client(deployment.keys["alice"]) as client:
        headers = {"Idempotency-Key": "ci-run-43"}
        first = client.post("/v1/scans", headers=headers, files={"model": faces["mnist_model"].read_bytes()},
                            data={"options": '{"detectors": []}'})
        count = client.get("/v1/scans").json()["count"]
        other = client.post("/v1/scans", headers=headers, files={"model": faces["mnist_model"].read_bytes()},
                            data={"options": '{"detectors": [], "preprocessing": {"divide_by": 255}}'})
        after = client.get("/v1/scans").json()["count"]
    assert first.status_code == 202
    assert other.status_code == 422 and other.headers["content-type"] == "application/problem+json"
    assert other.json()["type"].endswith(":idempotency-key-reused") and first.json()["id"] in other.json()["detail"]
    assert after == count


def test_delete_cancels_a_running_scan_and_deletes_its_files(deployment, faces, tmp_path):
    data = np.load(faces["clean"])
    unique = tmp_path / "clean_unique.npz"  # content no other scan shares, so its blob must go
    # 80 samples: enough for the held-out part and fine-tuning's validation part (10 each; 40 would be refused).
    x = np.clip(data["x"].astype(np.int16) + 1, 0, 255).astype(np.uint8)
    np.savez(unique, x=np.concatenate([x, x]), y=np.concatenate([data["y"], data["y"]]))
    digest = hashlib.sha256(unique.read_bytes()).hexdigest()
    with deployment.client(deployment.keys["alice"]) as client:
        # 500 fine-tuning epochs keep it running for minutes, so the DELETE surely finds it running.
        scan_id = post_scan(client, faces["model"], LONG_FACE_OPTIONS, clean_data=unique).json()["id"]
        wait_scan(client, scan_id, until=lambda s: s["state"] == "running", timeout=60)
        assert (deployment.storage / "blobs" / digest[:2] / digest).exists()
        deleted = client.delete(f"/v1/scans/{scan_id}")
        after = client.get(f"/v1/scans/{scan_id}")
    assert deleted.status_code == 200 and deleted.json()["state"] == "canceled"
    assert after.status_code == 404
    assert not (deployment.storage / "blobs" / digest[:2] / digest).exists()
    deployment.wait_for(lambda: not list((deployment.storage / "work").glob(f"{scan_id}.*")),
                        "the worker to drop the canceled scan", "worker-gpu", timeout=60)


def test_metrics_count_scans_stage_durations_queues_and_upload_bytes(deployment):
    with deployment.client() as client:
        text = client.get("/metrics").text
    values = {line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
              if line and not line.startswith("#")}
    prefix = deployment.env["BDSCREEN_QUEUE_PREFIX"]
    assert values['bdscreen_scans{state="succeeded"}'] >= 1
    assert values['bdscreen_stage_duration_seconds_count{stage="load"}'] >= 1
    assert f'bdscreen_queue_depth{{queue="{prefix}.gpu"}}' in values
    assert values["bdscreen_upload_bytes_total"] > 1e6


def test_openapi_documents_every_route_and_the_multipart_upload(deployment):
    spec = deployment.client().get("/openapi.json").json()
    assert {"/v1/scans", "/v1/scans/{scan_id}", "/v1/scans/{scan_id}/artifacts/{name}", "/v1/banks", "/healthz",
            "/readyz", "/metrics", "/scan"} <= set(spec["paths"])
    body = spec["paths"]["/v1/scans"]["post"]["requestBody"]["content"]["multipart/form-data"]["schema"]
    assert body["required"] == ["model"] and {"clean_data", "options"} <= set(body["properties"])


def test_a_killed_worker_s_scan_is_finished_by_a_new_worker(deployment, faces):
    with deployment.client(deployment.keys["alice"]) as client:
        scan_id = post_scan(client, faces["model"], clean_data=faces["clean"]).json()["id"]
        wait_scan(client, scan_id, until=lambda s: s["state"] == "running" and s["progress"] >= 0.2, timeout=90)
        deployment.kill("worker-gpu")
        time.sleep(1)
        assert client.get(f"/v1/scans/{scan_id}").json()["state"] == "running"
        deployment.start_worker("gpu")
        scan = wait_scan(client, scan_id, timeout=180)
    assert scan["state"] == "succeeded" and scan["attempts"] == 2, scan
    assert "re-queued" in deployment.log("gateway")


def test_banks_are_listed_for_a_key_holder(deployment):
    with deployment.client(deployment.keys["bob"]) as client, deployment.client() as anonymous:
        banks = client.get("/v1/banks")
        assert anonymous.get("/v1/banks").status_code == 401
    assert banks.status_code == 200 and banks.json()["count"] == len(banks.json()["data"])
    shipped = next(bank for bank in banks.json()["data"] if bank["name"] == "mnist-28x28x1")
    assert shipped["architectures"] == [{"convolutional": True, "activations": ["relu"]}]
