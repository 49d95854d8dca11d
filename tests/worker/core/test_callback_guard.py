"""The callback guard: webhooks reach public addresses, or only the hosts and networks the operator allows."""

import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from schemas.api import ScanCreate, ScanState
from worker.core.errors import OptionError
from worker.core.settings import Settings
from worker.core.store import ScanRecord
from worker.core.webhooks import check_callback_url, deliver


@pytest.mark.parametrize("url", ["http://127.0.0.1:8080/hook", "http://localhost/hook", "http://[::1]/hook",
                                 "http://169.254.169.254/latest/meta-data", "http://10.1.2.3/hook",
                                 "http://192.168.0.7/hook", "http://[::ffff:127.0.0.1]/hook", "http://0.0.0.0/hook",
                                 # forms that embed or tunnel to inner addresses, multicast (the five)
                                 "http://[::7f00:1]/hook", "http://[64:ff9b::a9fe:a9fe]/hook",
                                 "http://[2002:7f00:1::]/hook", "http://[fec0::1]/hook", "http://224.0.0.1/hook",
                                 "http://[::ffff:8.8.8.8]/hook", "http://[2001:0:4136:e378::1]/hook",
                                 "http://[ff02::1]/hook", "http://240.0.0.1/hook", "http://100.64.0.1/hook"])
def test_non_public_callbacks_are_refused_by_default(url, tmp_path):
    with pytest.raises(OptionError, match="not a public address"):
        check_callback_url(url, Settings(storage=tmp_path))


def test_allow_listed_networks_and_hosts_pass_and_others_still_fail(tmp_path):
    settings = Settings(storage=tmp_path, callback_allow="10.0.0.0/8, hooks.internal, *.ci.example")
    check_callback_url("http://10.9.8.7:9000/hook", settings)
    check_callback_url("https://hooks.internal/x", settings)  # listed by name: never resolved
    check_callback_url("https://runner-3.ci.example/x", settings)
    check_callback_url("https://8.8.8.8/hook", settings)  # public
    check_callback_url("https://[2606:4700:4700::1111]/hook", settings)  # public IPv6
    check_callback_url("http://[::ffff:10.1.2.3]/hook", settings)  # a listed network, in its IPv4-mapped form
    with pytest.raises(OptionError, match="192.168.1.1"):
        check_callback_url("http://192.168.1.1/hook", settings)
    with pytest.raises(OptionError, match="does not resolve"):
        check_callback_url("http://no-such-host.invalid/hook", settings)


def test_a_malformed_allow_list_entry_is_refused_at_start_up(tmp_path):
    with pytest.raises(ValueError, match="callback_allow"):
        Settings(storage=tmp_path, callback_allow="10.0.0.0/8, http://x/")


class Receiver(BaseHTTPRequestHandler):
    hits: list[str] = []

    def do_POST(self) -> None:  # noqa: N802 - http.server's name
        Receiver.hits.append(self.path)
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args) -> None:
        pass


def test_delivery_checks_the_address_again_and_sends_only_where_allowed(tmp_path):
    server = ThreadingHTTPServer(("127.0.0.1", 0), Receiver)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_port}/hook"
    record = ScanRecord(id="a" * 32, owner="local", state=ScanState.succeeded, options=ScanCreate(), uploads=[],
                        created_at=time.time(), ended_at=time.time())
    try:
        assert deliver(url, record, b"secret", Settings(storage=tmp_path)) is None
        assert Receiver.hits == []
        assert deliver(url, record, b"secret", Settings(storage=tmp_path, callback_allow="127.0.0.1")) == 204
        assert Receiver.hits == ["/hook"]
    finally:
        server.shutdown()
