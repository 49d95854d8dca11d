"""Webhooks: a scan's end is POSTed to its callback_url, signed with HMAC-SHA256, and retried until taken."""

import hashlib
import hmac
import json
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from conftest import ROOT, post_scan, wait_scan


class Receiver(BaseHTTPRequestHandler):
    received: list[tuple[dict, bytes]] = []
    answers = [500, 204]  # fails once, then takes it

    def do_POST(self) -> None:  # noqa: N802 - http.server's name
        body = self.rfile.read(int(self.headers["Content-Length"]))
        Receiver.received.append((dict(self.headers), body))
        self.send_response(Receiver.answers[min(len(Receiver.received), len(Receiver.answers)) - 1])
        self.end_headers()

    def log_message(self, *args) -> None:
        pass


def test_the_end_of_a_scan_is_posted_signed_and_retried_after_a_failure(deployment, faces):
    server = ThreadingHTTPServer(("127.0.0.1", 0), Receiver)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_port}/hook"
    try:
        with deployment.client(deployment.keys["alice"]) as client:
            scan_id = post_scan(client, faces["mnist_model"], json.dumps({"detectors": [], "callback_url": url}))
            scan = wait_scan(client, scan_id.json()["id"])
        deployment.wait_for(lambda: len(Receiver.received) >= 2, "the retried webhook", "worker-cpu", timeout=30)
    finally:
        server.shutdown()
    secret = subprocess.run([sys.executable, "-m", "cli.main", "keys", "webhook-secret"], cwd=ROOT,
                            env=deployment.env, capture_output=True, text=True, check=True).stdout.strip()
    for headers, body in Receiver.received[:2]:
        expected = "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
        assert hmac.compare_digest(headers["X-Bdscreen-Signature"], expected)
        summary = json.loads(body)
        assert summary["id"] == scan["id"] and summary["state"] == "succeeded"
        assert summary["verdict"] == "inconclusive"


def test_a_callback_into_the_deployments_own_network_is_refused_at_post(deployment, faces):
    with deployment.client(deployment.keys["alice"]) as client:
        count = client.get("/v1/scans").json()["count"]
        answer = post_scan(client, faces["mnist_model"],
                           json.dumps({"detectors": [], "callback_url": "http://169.254.169.254/latest/meta-data"}))
        after = client.get("/v1/scans").json()["count"]
    assert answer.status_code == 422 and answer.json()["type"].endswith(":bad-option")
    assert "BDSCREEN_CALLBACK_ALLOW" in answer.json()["detail"] and after == count
