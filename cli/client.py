"""``bdscreen scan MODEL --server URL``: the CI client. Uploads, follows the scan live, prints the verdict.

Torch-free: it speaks HTTP with httpx and reads the report with the pydantic schemas. Exit codes are those
of the local scan (0 clean, 1 backdoored, 3 inconclusive, 2 refused input, failed scan or unreachable
server), so a CI job can gate a deployment on it. The POST carries an ``Idempotency-Key``, so the retry
after a dropped connection returns the scan the first attempt created instead of starting a second one.
"""

import argparse
import hashlib
import os
import sys
import time
import uuid
from pathlib import Path

import httpx

from schemas.api import ScanCreate, ScanPublic, ScanState
from schemas.report import ScanReport
from schemas.scan import ScanOptions

EXIT_ERROR = 2
POLL_SECONDS = (0.25, 2.0)
UPLOAD_ATTEMPTS = 3


class ClientError(Exception):
    """What went wrong, as ``bdscreen: <category>: <message>``."""

    def __init__(self, category: str, message: str) -> None:
        super().__init__(f"{category}: {message}")


class Progress:
    """An upload progress bar on stderr (a line per quarter when stderr is not a terminal, as in CI logs)."""

    def __init__(self, total: int) -> None:
        self.total, self.done, self.shown = max(total, 1), 0, -1
        self.tty = sys.stderr.isatty()

    def advance(self, count: int) -> None:
        self.done += count
        fraction = min(self.done / self.total, 1.0)
        step = int(fraction * (50 if self.tty else 4))
        if step == self.shown:
            return
        self.shown = step
        bar = "#" * int(fraction * 30)
        text = f"  upload [{bar:<30}] {fraction:4.0%} {self.done / 1e6:,.1f}/{self.total / 1e6:,.1f} MB"
        print(("\r" + text) if self.tty else text, end="" if self.tty and fraction < 1 else "\n", file=sys.stderr)


class ProgressFile:
    """A file that advances a Progress as httpx streams it (httpx takes its length from ``fileno``)."""

    def __init__(self, path: Path, progress: Progress) -> None:
        self.file, self.progress = path.open("rb"), progress

    def read(self, size: int = -1) -> bytes:
        data = self.file.read(size)
        self.progress.advance(len(data))
        return data

    def fileno(self) -> int:
        return self.file.fileno()

    def seek(self, offset: int, whence: int = 0) -> int:
        return self.file.seek(offset, whence)

    def tell(self) -> int:
        return self.file.tell()

    def close(self) -> None:
        self.file.close()


def _raise_for_problem(response: httpx.Response) -> None:
    if response.is_success:
        return
    try:
        problem = response.json()
        raise ClientError(problem.get("category", str(response.status_code)), problem.get("detail", response.text))
    except ValueError:
        raise ClientError(f"http-{response.status_code}", response.text[:500] or response.reason_phrase) from None


def upload(client: httpx.Client, args: argparse.Namespace, options: ScanOptions) -> ScanPublic:
    files = {name: path for name, path in (("model", args.model), ("architecture", args.architecture),
                                           ("clean_data", args.clean_data), ("eval_data", args.eval_data),
                                           ("poisoned_data", args.poisoned_data)) if path is not None}
    # Only what the user set goes over the wire: the server's schema fills in its own defaults.
    sent = options.model_dump(exclude_unset=True)
    if getattr(args, "callback_url", None) is not None:
        sent["callback_url"] = args.callback_url
    create = ScanCreate.model_validate(sent)
    headers = {"Idempotency-Key": uuid.uuid4().hex}
    for attempt in range(1, UPLOAD_ATTEMPTS + 1):
        progress = Progress(sum(p.stat().st_size for p in files.values()))
        opened = {name: ProgressFile(path, progress) for name, path in files.items()}
        try:
            body = {"options": create.model_dump_json(exclude_unset=True)}
            response = client.post("/v1/scans", headers=headers, data=body,
                                   files={name: (files[name].name, f) for name, f in opened.items()})
        except httpx.TransportError as exc:
            if attempt == UPLOAD_ATTEMPTS:
                raise ClientError("unreachable", f"the upload to {client.base_url} failed: {exc}") from None
            time.sleep(attempt)
            continue
        finally:
            for f in opened.values():
                f.close()
        _raise_for_problem(response)
        return ScanPublic.model_validate(response.json())
    raise AssertionError("unreachable")


def follow(client: httpx.Client, scan: ScanPublic) -> ScanPublic:
    """Poll until the scan ends, printing each new stage with its progress (on stderr, even with --json)."""
    delay, seen = POLL_SECONDS[0], None
    print(f"  scan {scan.id} {scan.state.value}", file=sys.stderr)
    while not scan.state.ended:
        time.sleep(delay)
        response = client.get(f"/v1/scans/{scan.id}")
        _raise_for_problem(response)
        scan = ScanPublic.model_validate(response.json())
        shown = (scan.state, scan.stage)
        if shown != seen:
            stage = scan.stage or scan.state.value
            print(f"  [{scan.progress:4.0%}] {stage}", file=sys.stderr)
            seen, delay = shown, POLL_SECONDS[0]
        else:
            delay = min(delay * 1.5, POLL_SECONDS[1])
    return scan


def download(client: httpx.Client, scan: ScanPublic, folder: Path) -> None:
    """Every artifact and report.json into ``folder``, each checked against the report's sha256."""
    folder.mkdir(parents=True, exist_ok=True)
    for artifact in scan.report.artifacts:
        digest = hashlib.sha256()
        target = folder / Path(artifact.name).name
        with client.stream("GET", f"/v1/scans/{scan.id}/artifacts/{artifact.name}") as response:
            if not response.is_success:
                response.read()
                _raise_for_problem(response)
            with target.open("wb") as out:
                for chunk in response.iter_bytes(1 << 20):
                    digest.update(chunk)
                    out.write(chunk)
        if digest.hexdigest() != artifact.sha256:
            raise ClientError("bad-download", f"{artifact.name} does not match its sha256; download it again.")
    (folder / "report.json").write_text(scan.report.model_dump_json(indent=2))


def run_remote_scan(args: argparse.Namespace, options: ScanOptions) -> int:
    from cli.report import describe_report, exit_code

    key = args.api_key or os.environ.get("BDSCREEN_API_KEY")
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    try:
        with httpx.Client(base_url=args.server.rstrip("/"), headers=headers,
                          timeout=httpx.Timeout(120, connect=10)) as client:
            scan = follow(client, upload(client, args, options))
            if scan.state != ScanState.succeeded:
                error = scan.error
                raise ClientError(error.category if error else scan.state.value,
                                  error.message if error else f"the scan was {scan.state.value}.")
            folder = args.download or args.out  # --out means the same for a remote scan
            if folder is not None:
                download(client, scan, folder)
    except ClientError as exc:
        print(f"bdscreen: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except httpx.HTTPError as exc:
        print(f"bdscreen: unreachable: {args.server}: {type(exc).__name__}: {exc}", file=sys.stderr)
        return EXIT_ERROR
    report: ScanReport = scan.report
    print(report.model_dump_json(indent=2) if args.json else describe_report(report, folder))
    return exit_code(report)
