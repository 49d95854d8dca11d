"""Webhooks: when a scan ends, POST its summary to the scan's ``callback_url``, signed.

The body is the JSON of :class:`schemas.api.ScanSummary`; the header ``X-Bdscreen-Signature: sha256=<hex>``
is HMAC-SHA256 of the exact body bytes under the deployment's webhook secret (``BDSCREEN_WEBHOOK_SECRET``,
or a random one kept in ``<storage>/webhook-secret`` and shown by ``bdscreen keys webhook-secret``).
A receiver recomputes it over the raw body and compares with :func:`hmac.compare_digest`. Any answer other
than 2xx, or no answer, is retried by the Celery task with exponential backoff.

A callback may only reach public addresses, or hosts and networks the operator allow-lists
(``BDSCREEN_CALLBACK_ALLOW``): otherwise anyone who may submit a scan could make the workers POST into the
deployment's own network (cloud metadata at 169.254.169.254, an admin port on loopback). The gateway refuses
such a ``callback_url`` when the scan is posted, and the worker checks the address again just before it
delivers, because a name can be re-pointed in between.
"""

import hashlib
import hmac
import ipaddress
import logging
import os
import secrets
import socket
from datetime import UTC, datetime
from pathlib import Path

import httpx

from schemas.api import ScanError, ScanSummary
from worker.core.errors import OptionError
from worker.core.settings import Settings
from worker.core.store import ScanRecord

logger = logging.getLogger(__name__)
SIGNATURE_HEADER = "X-Bdscreen-Signature"
TIMEOUT_SECONDS = 10


class WebhookError(Exception):
    """The receiver did not take the webhook; the task retries."""


def check_callback_url(url: str, settings: Settings) -> None:
    """Raise :class:`OptionError` unless ``url``'s host is allow-listed or every address it resolves to is public."""
    parsed = httpx.URL(url)
    host = parsed.host.lower()
    names, networks = settings.callback_allow_list()
    if any(host == name or (name.startswith("*.") and host.endswith(name[1:])) for name in names):
        return
    try:
        addresses = {ipaddress.ip_address(host)}
    except ValueError:
        try:
            infos = socket.getaddrinfo(host, parsed.port or 443, type=socket.SOCK_STREAM)
        except (socket.gaierror, UnicodeError) as exc:
            raise OptionError(f"callback_url: the host {host!r} does not resolve ({exc}).") from None
        addresses = {ipaddress.ip_address(str(info[4][0]).split("%")[0]) for info in infos}
    for address in addresses:
        if not is_public_unicast(address) and not _listed(address, networks):
            raise OptionError(f"callback_url: {host} is {address}, not a public address; webhooks may reach "
                              "non-public addresses only where the operator lists them in BDSCREEN_CALLBACK_ALLOW.")


# Addresses Python counts as global that still lead inside a network or to many hosts: IPv6 forms that embed an
# IPv4 address a gateway or tunnel turns back into IPv4 (which may be 127.0.0.1 or 169.254.169.254), site-local
# and documentation ranges, and the 6to4 relay anycast.
_EMBEDDING_OR_SPECIAL = tuple(ipaddress.ip_network(net) for net in (
    "::ffff:0:0/96",  # IPv4-mapped
    "::ffff:0:0:0/96",  # IPv4-translated (SIIT)
    "::/96",  # IPv4-compatible (deprecated)
    "64:ff9b::/96",  # NAT64 well-known prefix
    "64:ff9b:1::/48",  # NAT64 local use
    "2002::/16",  # 6to4
    "2001::/32",  # Teredo
    "2001:db8::/32",  # documentation
    "fec0::/10",  # site-local (deprecated)
    "192.88.99.0/24",  # 6to4 relay anycast
))


def is_public_unicast(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    """An allow-list: global unicast only, never a form that embeds or tunnels to another address."""
    return (address.is_global and not address.is_multicast and not address.is_reserved
            and not address.is_link_local and not address.is_unspecified
            and not any(address in network for network in _EMBEDDING_OR_SPECIAL if network.version == address.version))


def _listed(address: ipaddress.IPv4Address | ipaddress.IPv6Address, networks) -> bool:
    """In an operator-listed network, as itself or as the IPv4 address it maps."""
    forms = [address]
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
        forms.append(address.ipv4_mapped)
    return any(form in network for form in forms for network in networks if form.version == network.version)


def webhook_secret(settings: Settings) -> bytes:
    if settings.webhook_secret:
        return settings.webhook_secret.encode()
    path = settings.storage / "webhook-secret"
    if not path.exists():
        _create_secret(path)
    return path.read_text().strip().encode()


def _create_secret(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:  # another process made it first
        return
    with os.fdopen(fd, "w") as f:
        f.write(secrets.token_hex(32))


def sign(secret: bytes, body: bytes) -> str:
    return "sha256=" + hmac.new(secret, body, hashlib.sha256).hexdigest()


def callback_url(record: ScanRecord) -> str | None:
    url = record.options.callback_url
    return None if url is None else str(url)


def summary_of(record: ScanRecord) -> ScanSummary:
    report = record.report
    return ScanSummary(
        id=record.id, state=record.state, verdict=report.verdict if report else None,
        score=report.score if report else None, error=ScanError(**record.error) if record.error else None,
        ended_at=None if record.ended_at is None else datetime.fromtimestamp(record.ended_at, UTC),
        artifacts=[a.name for a in report.artifacts] if report else [])


def deliver(url: str, record: ScanRecord, secret: bytes, settings: Settings) -> int | None:
    """POST the signed summary; returns the status code, raises WebhookError unless it is 2xx.

    A URL that now points at a refused address is not retried: None, with the reason logged."""
    try:
        check_callback_url(url, settings)
    except OptionError as exc:
        logger.warning("webhook for scan %s not sent: %s", record.id, exc.message)
        return None
    body = summary_of(record).model_dump_json().encode()
    headers = {"Content-Type": "application/json", SIGNATURE_HEADER: sign(secret, body),
               "User-Agent": "bdscreen-webhook"}
    try:
        response = httpx.post(url, content=body, headers=headers, timeout=TIMEOUT_SECONDS, follow_redirects=False)
    except httpx.HTTPError as exc:
        raise WebhookError(f"{url}: {type(exc).__name__}: {exc}") from exc
    if not 200 <= response.status_code < 300:
        raise WebhookError(f"{url} answered {response.status_code}")
    return response.status_code
