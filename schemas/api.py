"""The REST contract of the scan service: what ``POST /v1/scans`` takes and what the other routes return.

``ScanCreate`` is the ``options`` part of the upload; ``ScanPublic`` is one scan as ``GET /v1/scans/{id}``
returns it (with the same report as ``bdscreen scan --json`` once it succeeded); ``ScansPublic`` is a page of
them. ``ScanSummary`` is the body of the webhook sent when a scan ends. ``Problem`` is every error body
(RFC 9457, ``application/problem+json``).
"""

from datetime import datetime
from enum import StrEnum

from pydantic import BaseModel, Field, HttpUrl

from schemas.problems import ErrorCategory, ScanFailure
from schemas.report import ScanReport, Verdict
from schemas.scan import ScanOptions

#: Files a scan upload may carry, as multipart field names; ``model`` is required.
UPLOAD_FIELDS = ("model", "architecture", "clean_data", "eval_data", "poisoned_data")
#: Prefix of every problem ``type``; the last part is stable (an ErrorCategory or a ServiceProblem value).
PROBLEM_TYPE_PREFIX = "urn:bdscreen:problem:"


class ScanState(StrEnum):
    """Where a scan is in its life."""

    #: Accepted and waiting for a worker.
    queued = "queued"
    #: A worker is running it; ``stage`` and ``progress`` say how far it got.
    running = "running"
    #: Done: the report and the artifacts are available.
    succeeded = "succeeded"
    #: Ended without a report; ``error`` says why.
    failed = "failed"
    #: Stopped by ``DELETE`` before it ended; its files are deleted.
    canceled = "canceled"

    @property
    def ended(self) -> bool:
        return self in (ScanState.succeeded, ScanState.failed, ScanState.canceled)


class ScanCreate(ScanOptions):
    """The ``options`` JSON of an upload: the scan options of ``bdscreen scan`` and where to report the end."""

    callback_url: HttpUrl | None = Field(
        default=None, description="POSTed the scan's summary when it ends, signed with HMAC-SHA256 over the body "
                                  "(header X-Bdscreen-Signature: sha256=<hex>).")


class ScanError(BaseModel):
    """Why a scan failed: a stable category (an input ErrorCategory, or a ScanFailure) and what to do about it."""

    category: ErrorCategory | ScanFailure
    message: str


class UploadCheck(BaseModel):
    """The upload check on the cpu queue: accepted, refused with the category and why, or (``ok`` None) started
    ``attempts`` times without an outcome, which a check whose worker died leaves behind."""

    ok: bool | None = None
    category: ErrorCategory | None = None
    message: str | None = None
    attempts: int = 0
    not_applicable: dict[str, str] = Field(default_factory=dict,
                                           description="Requested detectors that cannot judge the model, and why.")

    @property
    def finished(self) -> bool:
        return self.ok is not None


class UploadedFile(BaseModel):
    field: str
    filename: str | None = None
    bytes: int
    sha256: str


class ScanPublic(BaseModel):
    """One scan. ``report`` is set once it succeeded (omitted in lists)."""

    id: str
    state: ScanState
    stage: str | None = Field(default=None, description="Current or last engine stage (load, detect, sweep, ...).")
    progress: float = Field(ge=0, le=1, description="Fraction of the scan done.")
    created_at: datetime
    started_at: datetime | None = None
    ended_at: datetime | None = None
    timings: dict[str, float] = Field(default_factory=dict,
                                      description="Seconds: 'queued' (waiting), 'running', and per engine stage.")
    attempts: int = Field(default=0, description="Times a worker started it (more than 1 after a lost worker).")
    uploads: list[UploadedFile] = Field(default_factory=list)
    verdict: Verdict | None = None
    score: float | None = None
    error: ScanError | None = None
    options: ScanCreate | None = Field(default=None, description="The options as the scan runs with them: what "
                                       "was sent, with defaults filled in (repair and goodnet off without clean_data).")
    report: ScanReport | None = None


class ScansPublic(BaseModel):
    """A page of the caller's scans, newest first; ``count`` is the total."""

    data: list[ScanPublic]
    count: int


class ScanSummary(BaseModel):
    """The webhook body: how a scan ended."""

    id: str
    state: ScanState
    verdict: Verdict | None = None
    score: float | None = None
    error: ScanError | None = None
    ended_at: datetime | None = None
    artifacts: list[str] = Field(default_factory=list, description="Names to fetch from /v1/scans/{id}/artifacts/.")


class BankArchitecture(BaseModel):
    convolutional: bool
    activations: list[str] = Field(description="The hidden non-linearities (relu, tanh, ...).")


class BankPublic(BaseModel):
    name: str
    num_classes: int | None = None
    patterns: int | None = None
    test_auc: float | None = None
    threshold: float | None = None
    architectures: list[BankArchitecture] | None = Field(
        None, description="The architectures of the bank's zoo; the ULP finding says whether the model is like one "
                          "of them, and a bank like the model is preferred (null: not recorded).")


class BanksPublic(BaseModel):
    data: list[BankPublic]
    count: int


class Problem(BaseModel):
    """RFC 9457 problem details; ``type`` ends with a stable category that clients may branch on."""

    type: str
    title: str
    status: int
    detail: str
    instance: str | None = None
    category: str = Field(description="The last part of ``type``.")
