"""The AWS actions' errors: what is retried and what is the action's failed outcome.

``map_error`` turns what botocore or the transport raised (after botocore's own attempts, in
its ``standard`` retry mode) into:

- :class:`AwsUnavailable` (``retriable = True``: the stage retries later, checking first):
  throttling codes, ``RequestTimeout``, ``InternalError``, ``ServiceUnavailable``, HTTP 429 or
  5xx, connect and read timeouts, refused or dropped connections;
- :class:`AwsDenied`: ``AccessDenied``, ``UnauthorizedOperation``, invalid or expired
  credentials, any other HTTP 403;
- :class:`AwsNotFound`: codes ending ``NotFound``/``NotFoundFault``/``NotFoundException``,
  ``NoSuch*``, HTTP 404;
- :class:`AwsError`: anything else (validation, an invalid state, no credentials at all).

All but the first are the action's failed outcome: reported as ``action.failed``, never
retried. Each message names the service, the operation, the AWS error code and its message;
``code`` keeps the code.
"""

from __future__ import annotations

from typing import Final

import aiohttp
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    CredentialRetrievalError,
    HTTPClientError,
)
from botocore.exceptions import (
    ConnectionError as BotoConnectionError,
)

RETRIABLE_CODES: Final = frozenset(
    {
        # botocore's own throttling codes (standard retry mode) and transient ones
        "Throttling",
        "ThrottlingException",
        "ThrottledException",
        "RequestThrottledException",
        "TooManyRequestsException",
        "ProvisionedThroughputExceededException",
        "TransactionInProgressException",
        "RequestLimitExceeded",
        "BandwidthLimitExceeded",
        "LimitExceededException",
        "RequestThrottled",
        "SlowDown",
        "PriorRequestNotComplete",
        "EC2ThrottledException",
        "RequestTimeout",
        "RequestTimeoutException",
        "InternalError",
        "InternalFailure",
        "InternalServerError",
        "ServiceUnavailable",
        "ServiceUnavailableException",
        "Unavailable",
        # CloudFront: too many invalidations in progress; they finish within minutes
        "TooManyInvalidationsInProgress",
    }
)
DENIED_CODES: Final = frozenset(
    {
        "AccessDenied",
        "AccessDeniedException",
        "UnauthorizedOperation",
        "UnauthorizedAccess",
        "AuthFailure",
        "InvalidClientTokenId",
        "UnrecognizedClientException",
        "SignatureDoesNotMatch",
        "ExpiredToken",
        "ExpiredTokenException",
    }
)


class AwsError(Exception):
    """An AWS action's failed outcome: reported, not retried."""

    retriable = False

    def __init__(self, message: str, *, code: str | None = None) -> None:
        super().__init__(message)
        self.code = code or None
        """The AWS error code (``AccessDenied``, ``DBInstanceNotFound``...), when AWS gave one."""


class AwsUnavailable(AwsError):
    """Throttled, a 5xx, a timeout, no connection, after botocore's own attempts: retried."""

    retriable = True


class AwsDenied(AwsError):
    """IAM refused the operation (or the credentials): reported, never retried."""


class AwsNotFound(AwsError):
    """The resource does not exist."""


class AwsRefused(AwsError):
    """The action refuses: the target or its state is not what it acts on."""


def error_code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code") or "")


def _status(exc: ClientError) -> int:
    return int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)


def _not_found(code: str, status: int) -> bool:
    suffixes = ("NotFound", "NotFoundFault", "NotFoundException")
    return code.endswith(suffixes) or code.startswith("NoSuch") or status == 404


def _client_error(exc: ClientError, service: str) -> AwsError:
    code, status = error_code(exc), _status(exc)
    message = str(exc.response.get("Error", {}).get("Message") or "")
    what = f"{service} {exc.operation_name}: {code or status}: {message}".rstrip(": ")
    kind: type[AwsError] = AwsError
    if code in RETRIABLE_CODES or status == 429 or status >= 500:
        kind = AwsUnavailable
    elif code in DENIED_CODES or status == 403:
        kind, what = AwsDenied, f"access denied: {what}"
    elif _not_found(code, status):
        kind, what = AwsNotFound, f"not found: {what}"
    return kind(what, code=code)


_TRANSIENT: Final = (
    BotoConnectionError,  # connect timeouts, refused and dropped connections
    HTTPClientError,  # read timeouts, connections closed mid-response
    CredentialRetrievalError,  # the role's credentials could not be fetched this time
    TimeoutError,
    aiohttp.ClientError,
)


def map_error(exc: BaseException, service: str) -> AwsError | None:
    """The AwsError for an exception from botocore or the transport (after botocore's own
    attempts); None for any other exception."""
    if isinstance(exc, AwsError):
        return exc
    if isinstance(exc, ClientError):
        return _client_error(exc, service)
    if isinstance(exc, _TRANSIENT):
        return AwsUnavailable(f"{service}: {type(exc).__name__}: {exc}")
    if isinstance(exc, BotoCoreError):
        # no credentials, invalid parameters, no region: the configuration, not the moment
        return AwsError(f"{service}: {type(exc).__name__}: {exc}")
    return None
