"""Bad uploads get their 4xx problem, leave no scan and no file behind, and break nothing else."""

import socket
import zipfile
from pathlib import Path

import httpx
import pytest
from conftest import FACE_OPTIONS, post_scan

PROBLEM = "application/problem+json"


def _stored_blobs(deployment) -> set[str]:
    return {p.name for p in (deployment.storage / "blobs").glob("??/*")}


@pytest.mark.parametrize(("model", "data", "status", "category", "says"), [
    ("not_a_model", None, 422, "unreadable-model", "Accepted formats"),
    ("pickle", None, 422, "refused-model", "pickle"),
    ("lambda", None, 422, "refused-model", "Lambda"),
    ("model", "digits", 422, "bad-data", "data"),
    ("model", "not_a_model", 422, "bad-data", "format"),
])
def test_bad_upload_is_a_problem_with_a_stable_type_and_leaves_nothing(deployment, faces, model, data, status,
                                                                      category, says):
    before = _stored_blobs(deployment)
    with deployment.client(deployment.keys["bob"]) as client:
        count = client.get("/v1/scans").json()["count"]
        files = {} if data is None else {"clean_data": faces[data]}
        # Without clean data, only detection: repair options would themselves be refused (bad-option).
        options = '{"preprocessing": {"divide_by": 255}, "detectors": []}' if data is None else FACE_OPTIONS
        response = post_scan(client, faces[model], options, **files)
        assert client.get("/v1/scans").json()["count"] == count
    problem = response.json()
    assert response.status_code == status and response.headers["content-type"] == PROBLEM
    assert problem["type"] == f"urn:bdscreen:problem:{category}" and problem["category"] == category
    assert says.lower() in problem["detail"].lower()
    assert _stored_blobs(deployment) == before


def test_bad_options_and_missing_model_are_problems(deployment, faces):
    with deployment.client(deployment.keys["bob"]) as client:
        bad_option = post_scan(client, faces["model"], '{"repair": {"thresholds": [200]}}')
        no_model = client.post("/v1/scans", files={"clean_data": faces["clean"].read_bytes()})
        not_multipart = client.post("/v1/scans", json={"model": "x"})
        no_such_layer = post_scan(client, faces["model"], '{"repair": {"layer": "conv_9"}}', clean_data=faces["clean"])
    assert bad_option.status_code == 422 and bad_option.json()["category"] == "bad-option"
    assert "thresholds" in bad_option.json()["detail"]
    assert no_model.status_code == 400 and "'model'" in no_model.json()["detail"]
    assert not_multipart.status_code == 415
    assert no_such_layer.status_code == 422 and "conv_9" in no_such_layer.json()["detail"]


def test_a_1_gb_body_past_the_limit_is_413_before_it_is_sent(deployment):
    request = (f"POST /v1/scans HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {deployment.keys['bob']}\r\n"
               "Content-Type: multipart/form-data; boundary=xyz\r\nContent-Length: 1073741824\r\n"
               "Expect: 100-continue\r\n\r\n")
    with socket.create_connection(("127.0.0.1", deployment.port), timeout=10) as connection:
        connection.sendall(request.encode())
        answer = b""
        while not answer.endswith(b"}"):  # headers, then the JSON problem; the 1 GB body is never sent
            answer += connection.recv(65536)
        answer = answer.decode()
    assert answer.startswith("HTTP/1.1 413"), answer
    assert "application/problem+json" in answer and "payload-too-large" in answer


def test_a_streamed_body_past_the_limit_is_413_and_the_gateway_goes_on(deployment):
    limit = int(deployment.env["BDSCREEN_MAX_UPLOAD_MB"]) * 1024 * 1024

    def body():
        yield b'--xyz\r\nContent-Disposition: form-data; name="model"; filename="big.h5"\r\n\r\n'
        chunk = b"\0" * (1 << 20)
        for _ in range(limit // len(chunk) + 8):
            yield chunk
        yield b"\r\n--xyz--\r\n"

    headers = {"Content-Type": "multipart/form-data; boundary=xyz", "Authorization": f"Bearer {deployment.keys['bob']}"}
    try:
        response = httpx.post(f"{deployment.url}/v1/scans", content=body(), headers=headers, timeout=60)
        assert response.status_code == 413 and response.json()["category"] == "payload-too-large"
    except (httpx.WriteError, httpx.RemoteProtocolError, httpx.ReadError):
        pass  # the gateway may close the connection before reading all of it: it still did not take it
    assert not list((deployment.storage / "tmp").iterdir())
    assert httpx.get(f"{deployment.url}/healthz").status_code == 200
    assert httpx.get(f"{deployment.url}/readyz").status_code == 200


@pytest.mark.parametrize("query", ["offset=17082474683064047894528", "offset=-1", "limit=100000000000000000000",
                                   "limit=0", "offset=1.5", "offset=1e400"])
def test_paging_out_of_bounds_is_422_never_500(deployment, query):
    with deployment.client(deployment.keys["bob"]) as client:
        response = client.get(f"/v1/scans?{query}")
    assert response.status_code == 422 and response.headers["content-type"] == PROBLEM


@pytest.fixture(scope="module")
def hostile(faces, tmp_path_factory) -> dict[str, Path]:
    """Hostile variants of the sunglasses upload: a pickle in its HDF5 user block, ONNX weights in another
    file named like a blob, and clean data whose header declares 10^9 faces."""
    import io
    import pickle

    import h5py
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    folder = tmp_path_factory.mktemp("hostile-uploads")
    polyglot = folder / "polyglot.h5"
    with h5py.File(faces["model"]) as source, h5py.File(polyglot, "w", userblock_size=512) as out:
        for key, value in source.attrs.items():
            out.attrs[key] = value
        for key in source:
            source.copy(source[key], out, name=key)
    content = bytearray(polyglot.read_bytes())
    payload = pickle.dumps({"payload": [1, 2, 3]}, protocol=2)
    content[:len(payload)] = payload
    polyglot.write_bytes(bytes(content))
    weight = numpy_helper.from_array(np.ones((3, 4), np.float32), "w")
    weight.ClearField("raw_data")
    weight.data_location = TensorProto.EXTERNAL
    weight.external_data.add(key="location", value="ab" + "0" * 62)
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 3])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 4])], [weight])
    external = folder / "external.onnx"
    onnx.save(helper.make_model(graph), str(external))
    huge = folder / "huge.npz"
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, {"descr": "|u1", "fortran_order": False,
                                                  "shape": (10**9, 55, 47, 3)})

    with zipfile.ZipFile(huge, "w") as archive:
        archive.writestr("x.npy", header.getvalue() + bytes(55 * 47 * 3 * 8))
        label_header = io.BytesIO()
        np.lib.format.write_array_header_1_0(label_header, {"descr": "<i8", "fortran_order": False,
                                                            "shape": (10**9,)})
        archive.writestr("y.npy", label_header.getvalue() + bytes(8 * 8))
    return {"polyglot": polyglot, "external": external, "huge": huge}


@pytest.mark.parametrize(("model", "data", "status", "category", "says"), [
    ("polyglot", None, 422, "refused-model", "polyglot"),
    ("external", None, 422, "refused-model", "self-contained"),
    (None, "huge", 413, "too-large", "budget"),
])
def test_hostile_uploads_are_refused_at_post(deployment, faces, hostile, model, data, status, category, says):
    before = _stored_blobs(deployment)
    with deployment.client(deployment.keys["bob"]) as client:
        files = {} if data is None else {"clean_data": hostile[data]}
        response = post_scan(client, hostile[model] if model else faces["model"], **files)
    assert response.status_code == status, response.text
    assert response.json()["category"] == category and says in response.json()["detail"]
    assert _stored_blobs(deployment) == before
