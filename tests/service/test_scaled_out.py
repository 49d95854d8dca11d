"""The scaled-out configuration end to end: RabbitMQ (amqp://) as the broker and PostgreSQL for the records,
with a gateway and one worker per queue as separate processes; no SQLite file is made."""

import subprocess
import time

import pytest
from conftest import Deployment, post_scan, wait_scan
from databases import listening, postgres_database


@pytest.fixture(scope="module")
def rabbitmq_url():
    """The RabbitMQ on 127.0.0.1:5672 (guest/guest); started when it is installed but not listening."""
    if not listening(5672):
        subprocess.run(["rabbitmq-server", "-detached"], check=False)
        deadline = time.monotonic() + 60
        while not listening(5672) and time.monotonic() < deadline:
            time.sleep(0.5)
    if not listening(5672):
        pytest.fail("RabbitMQ is not listening on 127.0.0.1:5672 (apt-get install rabbitmq-server; .ci/run does)")
    return "amqp://guest:guest@127.0.0.1:5672//"


def test_rabbitmq_and_postgresql_run_scans_and_hold_the_records(rabbitmq_url, faces, tmp_path):
    with postgres_database() as database:
        deployment = Deployment(tmp_path, rabbitmq_url, auth="open", database_url=database)
        deployment.start("gateway", "serve", "--no-worker")
        deployment.start_worker("cpu")
        deployment.start_worker("gpu")
        try:
            deployment.wait_ready()
            with deployment.client() as client:
                created = post_scan(client, faces["mnist_model"], '{"detectors": []}')
                assert created.status_code == 202, created.text + deployment.log("gateway")[-2000:]
                scan = wait_scan(client, created.json()["id"])
                assert scan["state"] == "succeeded" and scan["attempts"] == 1
                refused = post_scan(client, faces["not_a_model"], '{"detectors": []}')
                assert refused.status_code == 422
                assert client.get("/v1/scans").json()["count"] == 1
        finally:
            deployment.stop()
        assert not (deployment.storage / "scans.db").exists()  # the records are in PostgreSQL only
