"""DynamoDB's errors as the service's: what the operator or time fixes is a 503 saying what to do.

Server messages are scrubbed before they reach a client or a log (`server_message`).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager

from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError, PartialCredentialsError

from ...errors import SchemaNotReady, ServiceUnavailable, ZipStreamError
from ..contract import MIGRATE_HINT

# Request-level errors that mean "try again later", not "your request is wrong".
RETRYABLE = frozenset({
    "ProvisionedThroughputExceededException", "ThrottlingException", "RequestLimitExceeded",
    "LimitExceededException", "InternalServerError", "ServiceUnavailable", "TransactionConflictException",
    "ItemCollectionSizeLimitExceededException",
})
# The identity this service runs as may not do the operation (IAM policy): fixed by granting it.
DENIED = frozenset({"AccessDeniedException", "AccessDenied", "NotAuthorized"})
# The request's credentials or signature are refused (AWS's common errors): fixed in the credentials.
UNAUTHENTICATED = frozenset({
    "UnrecognizedClientException", "InvalidSignatureException", "MissingAuthenticationTokenException",
    "MissingAuthenticationToken", "ExpiredTokenException", "ExpiredToken", "IncompleteSignature",
    "IncompleteSignatureException", "InvalidClientTokenId", "SignatureDoesNotMatch", "RequestExpired",
})
# What a server's error message may carry that must not reach a client or a log: an access key id,
# a secret key or session token, and the canonical request AWS echoes on a signature mismatch.
_KEY_ID = re.compile(r"\b(?:AKIA|ASIA|AIDA|AROA|AGPA|ANPA|ANVA|AIPA|APKA|ABIA|ACCA)[A-Z0-9]{12,}\b")
_TOKEN = re.compile(r"[A-Za-z0-9+/]{32,}={0,2}")
_ECHOED_REQUEST = re.compile(r"\s*The (?:Canonical String|String-to-Sign)\b.*", re.DOTALL)
_MESSAGE_CHARS = 300


def error_code(error: ClientError) -> str:
    """DynamoDB's name of the error (ConditionalCheckFailedException, ...); "" if it gave none."""
    return str(error.response.get("Error", {}).get("Code", ""))


def http_status(error: ClientError) -> int:
    return int(error.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)


def server_message(text: str) -> str:
    """A DynamoDB error message fit for a client and a log: one line, at most _MESSAGE_CHARS, without
    key ids, keys, tokens or the canonical request a signature error echoes."""
    text = _ECHOED_REQUEST.sub("", text)
    text = _TOKEN.sub("[redacted]", _KEY_ID.sub("[key id]", text))
    text = " ".join(text.split())
    return text if len(text) <= _MESSAGE_CHARS else text[: _MESSAGE_CHARS - 1] + "…"


def translate(error: ClientError, action: str, table: str) -> ZipStreamError:
    """DynamoDB's answer as the service's error: 503 for what the operator or time fixes (a missing
    table, throttling, refused permissions or credentials), 500 for a request it found wrong."""
    code, status = error_code(error), http_status(error)
    message = server_message(str(error.response.get("Error", {}).get("Message", "")))
    said = f"{code or status}: {message}" if message else str(code or status)
    if code == "ResourceNotFoundException":
        not_ready = SchemaNotReady(f"DynamoDB table {table} does not exist: {MIGRATE_HINT}", retry_after=10)
        not_ready.reason = f"table {table} does not exist"
        return not_ready
    permission = f"dynamodb:{error.operation_name}"
    if code in DENIED:
        return ServiceUnavailable(
            f"DynamoDB refused {permission} on table {table}: {said} (grant {permission} to the "
            "IAM identity this service runs as)", retry_after=30)
    if code in UNAUTHENTICATED:
        return ServiceUnavailable(
            f"DynamoDB refused {permission}: {said} (check this service's AWS credentials: "
            "AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN or its IAM role)", retry_after=30)
    if code in RETRYABLE or status >= 500:
        return ServiceUnavailable(f"DynamoDB is unavailable ({action}, {error.operation_name}: {said})")
    return ZipStreamError(f"DynamoDB refused {action} ({error.operation_name}): {said}")


@contextmanager
def translated(action: str, table: str) -> Iterator[None]:
    """Translate botocore errors raised in the block (doing `action` on `table`) into the service's errors."""
    try:
        yield
    except ClientError as error:
        raise translate(error, action, table) from None
    except (NoCredentialsError, PartialCredentialsError) as error:
        raise ServiceUnavailable(
            f"DynamoDB was not asked ({action}): {error}; set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY "
            "or give the service an IAM role", retry_after=30) from None
    except BotoCoreError as error:
        raise ServiceUnavailable(f"DynamoDB did not answer ({action}: {type(error).__name__})") from None
