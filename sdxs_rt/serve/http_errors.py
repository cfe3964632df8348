"""Our errors as HTTP answers, in one table: the exit-code kinds of the CLI, mapped to statuses.

Every error body has one shape, OpenAI's (its clients read `error.message`), plus A1111's
`detail` string: `{"error": {"message", "type", "code"}, "detail": message}` where `type` is the
kind below and `code` the CLI's exit code for the same failure.
"""

from __future__ import annotations

from dataclasses import dataclass

from sdxs_rt.errors import (
    EXIT_DEVICE,
    EXIT_ENGINE,
    EXIT_NOT_FOUND,
    EXIT_OUT_OF_MEMORY,
    EXIT_UNEXPECTED,
    EXIT_USAGE,
    SdxsError,
)
from sdxs_rt.jobs import QueueClosed, QueueFull, UnknownJob


class StorageFull(SdxsError):
    """The output folder cannot take the image (disk full, quota, file size limit)."""

    exit_code = EXIT_DEVICE


class JobFailed(SdxsError):
    """A queued job that failed, as its waiting request answers: the job's sentence, exit code
    and kind (sdxs_errors_total counted it when the job failed, not again as an answer)."""

    def __init__(self, message: str, exit_code: int, kind: HttpKind) -> None:
        super().__init__(message)
        self.exit_code = exit_code
        self.kind = kind


class JobCancelled(SdxsError):
    """The job was cancelled (interrupt, DELETE, shutdown) before all its images were drawn."""

    exit_code = EXIT_USAGE


class Unauthorized(SdxsError):
    exit_code = EXIT_USAGE


class ModelNotServed(SdxsError):
    """A request named a model that the allow-list holds but this server has not loaded."""

    exit_code = EXIT_USAGE


@dataclass(frozen=True)
class HttpKind:
    status: int
    kind: str


# Specific classes first (checked in order), then the exit code of any other SdxsError.
BY_CLASS: tuple[tuple[type[BaseException], HttpKind], ...] = (
    (QueueFull, HttpKind(429, "queue_full")),
    (QueueClosed, HttpKind(503, "shutting_down")),
    (UnknownJob, HttpKind(404, "unknown_job")),
    (StorageFull, HttpKind(507, "storage_full")),
    (Unauthorized, HttpKind(401, "unauthorized")),
    (ModelNotServed, HttpKind(409, "model_not_loaded")),
    (JobCancelled, HttpKind(409, "cancelled")),
)
BY_EXIT_CODE: dict[int, HttpKind] = {
    EXIT_USAGE: HttpKind(400, "bad_request"),
    EXIT_NOT_FOUND: HttpKind(404, "not_found"),
    EXIT_DEVICE: HttpKind(503, "unavailable"),
    EXIT_OUT_OF_MEMORY: HttpKind(503, "out_of_memory"),
    EXIT_ENGINE: HttpKind(500, "engine"),
    EXIT_UNEXPECTED: HttpKind(500, "unexpected"),
}
INVALID_REQUEST = HttpKind(422, "invalid_request")  # JSON that does not fit the schema
INVALID_JSON = HttpKind(400, "invalid_json")
TOO_LARGE = HttpKind(413, "too_large")
BAD_LENGTH = HttpKind(400, "bad_request")  # a Content-Length header that is not a number


def kind_of(exc: BaseException) -> HttpKind:
    if isinstance(exc, JobFailed):
        return exc.kind
    return kind_of_class(
        type(exc), exc.exit_code if isinstance(exc, SdxsError) else EXIT_UNEXPECTED
    )


def kind_of_class(error_class: type[BaseException], exit_code: int) -> HttpKind:
    """The kind of an error known by its class and exit code (a failed job's result)."""
    for cls, kind in BY_CLASS:
        if issubclass(error_class, cls):
            return kind
    return BY_EXIT_CODE.get(exit_code, BY_EXIT_CODE[EXIT_UNEXPECTED])


def error_body(kind: HttpKind, message: str, exit_code: int) -> dict[str, object]:
    message = " ".join(message.split())  # one line
    return {
        "error": {"message": message, "type": kind.kind, "code": exit_code},
        "detail": message,
    }
