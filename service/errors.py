"""Domain errors of the gateway, and the one place where every error becomes an RFC 9457 problem+json.

The ``type`` of a problem is ``urn:bdscreen:problem:<category>``: an input
:class:`~schemas.problems.ErrorCategory` for refused uploads (the same words ``bdscreen scan`` prints), or a
:class:`ServiceProblem` for everything about the request itself. Both are stable; clients branch on them.
"""

from enum import StrEnum

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from schemas.api import PROBLEM_TYPE_PREFIX, Problem
from schemas.problems import ErrorCategory
from worker.core.errors import InputError

MEDIA_TYPE = "application/problem+json"


class ServiceProblem(StrEnum):
    """Problems with a request rather than with the uploaded files."""

    bad_request = "bad-request"
    unauthorized = "unauthorized"
    not_found = "not-found"
    method_not_allowed = "method-not-allowed"
    payload_too_large = "payload-too-large"
    unsupported_media_type = "unsupported-media-type"
    not_ready = "not-ready"
    idempotency_key_reused = "idempotency-key-reused"
    internal = "internal"


#: HTTP status of each upload refusal.
STATUS_BY_CATEGORY = {
    ErrorCategory.refused_model: 422, ErrorCategory.unreadable_model: 422, ErrorCategory.unsupported_layer: 422,
    ErrorCategory.too_large: 413, ErrorCategory.bad_data: 422, ErrorCategory.bad_option: 422,
}
TITLES = {
    ErrorCategory.refused_model: "The model was refused because loading it could run code",
    ErrorCategory.unreadable_model: "The model cannot be read",
    ErrorCategory.unsupported_layer: "The model uses a layer bdscreen does not support",
    ErrorCategory.too_large: "The model or data is too large",
    ErrorCategory.bad_data: "The data does not fit the model",
    ErrorCategory.bad_option: "An option is invalid",
    ServiceProblem.bad_request: "The request is malformed",
    ServiceProblem.unauthorized: "An API key is required",
    ServiceProblem.not_found: "Not found",
    ServiceProblem.method_not_allowed: "Method not allowed",
    ServiceProblem.payload_too_large: "The request body is too large",
    ServiceProblem.unsupported_media_type: "Unsupported media type",
    ServiceProblem.not_ready: "The service is not ready",
    ServiceProblem.idempotency_key_reused: "The Idempotency-Key belongs to a different request",
    ServiceProblem.internal: "Internal error",
}
_BY_STATUS = {400: ServiceProblem.bad_request, 401: ServiceProblem.unauthorized, 404: ServiceProblem.not_found,
              405: ServiceProblem.method_not_allowed, 413: ServiceProblem.payload_too_large,
              415: ServiceProblem.unsupported_media_type, 503: ServiceProblem.not_ready}


class ServiceError(Exception):
    """A request the gateway answers with a 4xx or 5xx problem."""

    problem = ServiceProblem.internal
    status = 500

    def __init__(self, detail: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(detail)
        self.detail = detail
        self.headers = headers


class BadRequest(ServiceError):
    problem, status = ServiceProblem.bad_request, 400


class Unauthorized(ServiceError):
    problem, status = ServiceProblem.unauthorized, 401


class NotFound(ServiceError):
    problem, status = ServiceProblem.not_found, 404


class PayloadTooLarge(ServiceError):
    problem, status = ServiceProblem.payload_too_large, 413


class UnsupportedMediaType(ServiceError):
    problem, status = ServiceProblem.unsupported_media_type, 415


class IdempotencyKeyReused(ServiceError):
    """A key reused with another payload: 422, as the IETF Idempotency-Key draft asks."""

    problem, status = ServiceProblem.idempotency_key_reused, 422


class NotReady(ServiceError):
    problem, status = ServiceProblem.not_ready, 503


def problem_response(request: Request, category: StrEnum, status: int, detail: str,
                     headers: dict[str, str] | None = None) -> JSONResponse:
    body = Problem(type=PROBLEM_TYPE_PREFIX + category.value, title=TITLES.get(category, "Error"), status=status,
                   detail=detail, instance=request.url.path, category=category.value)
    return JSONResponse(body.model_dump(exclude_none=True), status_code=status, media_type=MEDIA_TYPE,
                        headers=headers)


async def _service_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ServiceError)  # registered for this type only
    return problem_response(request, exc.problem, exc.status, exc.detail, exc.headers)


async def _input_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, InputError)  # registered for this type only
    return problem_response(request, exc.category, STATUS_BY_CATEGORY[exc.category], exc.message)


async def _validation_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)  # registered for this type only
    first = exc.errors()[0]
    where = ".".join(str(part) for part in first["loc"])
    return problem_response(request, ErrorCategory.bad_option, 422, f"{where}: {first['msg']}")


async def _http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, HTTPException)  # registered for this type only
    problem = _BY_STATUS.get(exc.status_code, ServiceProblem.internal)
    return problem_response(request, problem, exc.status_code, str(exc.detail), getattr(exc, "headers", None))


async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
    return problem_response(request, ServiceProblem.internal, 500,
                            f"The gateway failed ({type(exc).__name__}); this is a bug, please report it.")


def add_exception_handlers(app: FastAPI) -> None:
    app.add_exception_handler(ServiceError, _service_error)
    app.add_exception_handler(InputError, _input_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(HTTPException, _http_error)
    app.add_exception_handler(Exception, _unexpected)
