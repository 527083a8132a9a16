"""boto3 clients for the S3 source and the DynamoDB repository: one per process and settings.

Endpoints are left to boto3's own `AWS_ENDPOINT_URL`, `AWS_ENDPOINT_URL_S3` and
`AWS_ENDPOINT_URL_DYNAMODB` handling (MinIO, Ceph, R2, moto work the same way; `config.aws_endpoint`
names the one in use); credentials come from boto3's usual chain. Nothing here translates errors:
each caller does that at its own edge.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import threading
from typing import TYPE_CHECKING, Literal
from urllib.parse import urlsplit

import boto3
from botocore.config import Config as BotoConfig

from .config import Config, aws_endpoint
from .deadline import current

if TYPE_CHECKING:
    from mypy_boto3_dynamodb import DynamoDBClient
    from mypy_boto3_s3 import S3Client

log = logging.getLogger(__name__)

AddressingStyle = Literal["auto", "virtual", "path"]  # botocore's `s3.addressing_style`

# botocore's default pool of 10 connections would queue a gevent worker's downloads behind each other.
MIN_POOL = 100

_lock = threading.Lock()
_s3_clients: dict[tuple[object, ...], S3Client] = {}


def pool_size(config: Config) -> int:
    """Connections per client: S3_MAX_POOL, or enough for one download's pre-flight and the reads of others
    beside it (2 x PREFLIGHT_CONCURRENCY: with 256 that is 512 kept-alive connections per worker at most)."""
    return config.s3_max_pool or max(MIN_POOL, config.preflight_concurrency * 2)


def addressing_style(path_style: bool | None, endpoint: str | None) -> AddressingStyle:
    """botocore's `s3.addressing_style` for S3_PATH_STYLE: true "path", false "virtual", unset "auto"
    (botocore's choice: path style for a custom endpoint, virtual-hosted on AWS).

    An endpoint that is an IP literal can't carry a bucket label in its host name, so there "virtual"
    becomes "path" (botocore does the same for most names, but makes `my.bucket.10.0.0.5` of a dotted one).
    """
    if path_style is None:
        return "auto"
    if path_style:
        return "path"
    host = urlsplit(endpoint).hostname if endpoint else None
    if host:
        try:
            ipaddress.ip_address(host)
        except ValueError:
            return "virtual"
        log.warning("S3_PATH_STYLE=false: the S3 endpoint %s is an IP address, which can't be "
                    "virtual-hosted; using path-style addressing", endpoint)
        return "path"
    return "virtual"


def _settings(config: Config, timeout: float, addressing: AddressingStyle = "auto") -> BotoConfig:
    return BotoConfig(
        region_name=config.aws_region,
        max_pool_connections=pool_size(config),
        retries={"mode": "standard", "max_attempts": 4},
        connect_timeout=min(10.0, timeout),
        read_timeout=timeout,
        tcp_keepalive=True,
        # The zip writer checks every fully read member against the CRC-32 it promised;
        # botocore re-computing another checksum of every byte would only cost CPU.
        response_checksum_validation="when_required",
        s3={"addressing_style": addressing},
    )


class DeadlinePassed(Exception):
    """Raised by the S3 client instead of sending a request (first or retry) once the calling
    thread's pre-flight deadline has passed or been cancelled (see zipstream.deadline.current)."""


def _refuse_after_deadline(**_kwargs: object) -> None:
    """botocore `before-send` hook: runs before every attempt, including botocore's own retries."""
    deadline = current()
    if deadline is not None and (deadline.expired or deadline.cancelled):
        raise DeadlinePassed()


def s3_client(config: Config, preflight: bool = False) -> S3Client:
    """The process's S3 client for these settings (created on first use, shared by all threads).

    `preflight`: the client pre-flight uses, whose read timeout is also capped by PREFLIGHT_TIMEOUT
    (botocore takes no per-call timeout, so an attempt started just before the deadline could
    otherwise outlive it by S3_TIMEOUT).
    """
    # The pid is part of the key: a client (and its sockets) must never be shared across a fork.
    endpoint = aws_endpoint("s3")
    timeout = min(config.s3_timeout, config.preflight_timeout) if preflight else config.s3_timeout
    key = (os.getpid(), endpoint, config.aws_region, pool_size(config), timeout, config.s3_path_style)
    with _lock:
        client = _s3_clients.get(key)
        if client is None:
            # A Session of our own: boto3's default session is not safe to build clients from threads.
            client = boto3.session.Session().client(
                "s3", config=_settings(config, timeout, addressing_style(config.s3_path_style, endpoint))
            )
            client.meta.events.register("before-send.s3", _refuse_after_deadline)
            _s3_clients[key] = client
        return client


def _cap_attempt(request: object, **_kwargs: object) -> None:
    """botocore `before-send` hook (DynamoDB): this attempt's read timeout ends by the thread's deadline.

    botocore honours a `read_timeout` in the request context (botocore >= 1.43); an older one keeps the
    client's, which `dynamodb_client` sets to one attempt's share of DB_TIMEOUT anyway.
    """
    deadline = current()
    context = getattr(request, "context", None)
    if deadline is not None and deadline.seconds is not None and isinstance(context, dict):
        context["read_timeout"] = max(0.001, deadline.remaining())


def dynamodb_client(config: Config, attempt_seconds: float | None = None) -> DynamoDBClient:
    """A new DynamoDB client; the repository that owns it closes it.

    botocore retries nothing: the repository retries, within DB_TIMEOUT (a retry of botocore's own
    would wait its whole timeout again). Connect and read timeouts are `attempt_seconds` (default
    DB_TIMEOUT), each read capped further by the calling thread's deadline (zipstream.deadline.current).
    """
    seconds = config.db_timeout if attempt_seconds is None else attempt_seconds
    settings = _settings(config, seconds).merge(BotoConfig(retries={"mode": "standard", "total_max_attempts": 1}))
    with _lock:
        client = boto3.session.Session().client("dynamodb", config=settings)
    client.meta.events.register("before-send.dynamodb", _cap_attempt)
    return client
