"""B9: S3 requests per object (small, and bigger than PREFLIGHT_FETCH_BYTES), counted at an nginx reverse proxy
that adds latency in front of moto server; holding against PREFLIGHT_FETCH_BYTES=0 (HeadObject, as before)."""

from __future__ import annotations

import concurrent.futures
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import boto3
import requests
from botocore.config import Config

from tests.support.moto import REGION
from tests.support.nginx import Nginx

from .harness import Table, curl, curl_many, interleaved, json_body, proc_stat, service, time_to_first_byte

CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": REGION,
               "AWS_REGION": REGION}


def _client(endpoint: str, pool: int) -> Any:
    return boto3.client("s3", endpoint_url=endpoint, region_name=REGION,
                        aws_access_key_id=CREDENTIALS["AWS_ACCESS_KEY_ID"],
                        aws_secret_access_key=CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
                        config=Config(max_pool_connections=pool, s3={"addressing_style": "path"}))


def _get_all(endpoint: str, bucket: str, keys: list[str], parallel: int) -> float:
    """GetObject of every key with `parallel` threads (one request per object: the target's limit); seconds."""
    client = _client(endpoint, parallel)
    began = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(parallel) as pool:
        sizes = list(pool.map(lambda key: len(client.get_object(Bucket=bucket, Key=key)["Body"].read()),
                              keys))
    if len(sizes) != len(keys):
        raise RuntimeError("a GetObject failed")
    return time.perf_counter() - began


def _presigned(endpoint: str, bucket: str, keys: list[str]) -> list[str]:
    """Presigned GetObject URLs of `keys` through `endpoint` (path style), for curl."""
    client = _client(endpoint, 1)
    return [client.generate_presigned_url("get_object", Params={"Bucket": bucket, "Key": key}, ExpiresIn=3600)
            for key in keys]


def _quiet(proxy: Nginx, latency: float, timeout: float = 30.0) -> None:
    """Wait until `proxy` has been sent no request for a while (10 latencies, at least 0.2 s)."""
    pause = max(0.2, 10 * latency)
    deadline = time.monotonic() + timeout
    served = proxy.requests_served()
    while time.monotonic() < deadline:
        time.sleep(pause)
        now = proxy.requests_served()
        if now == served:
            return
        served = now


def s3_requests(tmp: Path, runs: int, count: int, size: int, latency: float, parallel: int,
                env: dict[str, str]) -> Table:
    """B9: bundles of `count` small S3 objects (and of a few bigger than PREFLIGHT_FETCH_BYTES) through
    POST /bundle and GET /:id: S3 requests per object, first byte, total and worker CPU, holding (a
    whole-zip download's pre-flight GETs each object's first bytes) and not (PREFLIGHT_FETCH_BYTES=0:
    HeadObject, then GetObject, as before issue 16), against GetObject of each object from the bench."""
    from moto.moto_server.threaded_moto_server import ThreadedMotoServer

    from tests.support.live import free_port

    ms = f"{latency * 1000:.0f} ms"
    big_count, big_size = (2 if count <= 10 else 8), 256 * 1024
    table = Table("b9_s3_requests", f"B9 S3: {count} objects x {size // 1024} KiB (and {big_count} x "
                  f"{big_size // 1024} KiB), {ms} latency per S3 request (moto server behind nginx)",
                  ["client", "S3 requests per object", "first byte s", "total s", "worker CPU ms per object",
                   f"limit: GetObject each, {parallel} at once s", "vs limit"])
    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # moto's server logs every request otherwise
    port = free_port()
    moto = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    moto.start()
    delayed = Nginx(proxy_to=port, delay=latency).start()
    zero = Nginx(proxy_to=port, delay=0.0).start()
    try:
        direct = f"http://127.0.0.1:{port}"
        client = _client(direct, 8)
        bucket = "bench-b9"
        client.create_bucket(Bucket=bucket)
        keys = [f"small/{i}.bin" for i in range(count)]
        big_keys = [f"big/{i}.bin" for i in range(big_count)]
        # boto3's default (since 1.36) stores a CRC-32 with each object, as the AWS CLI and SDKs now do.
        for key in keys:
            client.put_object(Bucket=bucket, Key=key, Body=os.urandom(size))
        for key in big_keys:
            client.put_object(Bucket=bucket, Key=key, Body=os.urandom(big_size))
        settings = {**CREDENTIALS, "AWS_ENDPOINT_URL": delayed.base_url, "FS_INTERFACES": "s3,https",
                    "S3_PATH_STYLE": "true", "S3_BUCKETS": bucket, **env}
        srcs = [f"s3://{bucket}/{key}" for key in keys]
        big_srcs = [f"s3://{bucket}/{key}" for key in big_keys]
        body, big_body = json_body(tmp, srcs), json_body(tmp, big_srcs)
        urls, big_urls = _presigned(delayed.base_url, bucket, keys), _presigned(delayed.base_url, bucket, big_keys)
        direct_urls, zero_urls = _presigned(direct, bucket, keys), _presigned(zero.base_url, bucket, keys)
        prefix_body = json_body(tmp, [f"s3://{bucket}/small/"])  # listed: no per-object pre-flight request
        with service(tmp, settings) as server, service(tmp, {**settings, "PREFLIGHT_FETCH_BYTES": "0"}) as before, \
                requests.Session() as session:
            response = session.post(server.url("/"), json={"files": [{"src": src} for src in srcs]}, timeout=120)
            response.raise_for_status()
            url = server.url(f"/{response.json()['id']}")
            curl(url)  # warm-up: connections, clients
            curl(before.url("/bundle"), post_json=body)
            (pid,) = server.worker_pids()
            (before_pid,) = before.worker_pids()

            def counted(fetch: Callable[[], object], worker: int, objects: int) -> Callable[[], dict[str, float]]:
                def run() -> dict[str, float]:
                    served, cpu = delayed.requests_served(), proc_stat(worker).cpu_seconds
                    began = time.perf_counter()
                    fetch()
                    wall = time.perf_counter() - began
                    return {"s": wall, "cpu": (proc_stat(worker).cpu_seconds - cpu) / objects,
                            "requests": (delayed.requests_served() - served) / objects}
                return run

            def first(target: str, posted: Path | None = None) -> Callable[[], dict[str, float]]:
                def run() -> dict[str, float]:
                    reading = {"first": time_to_first_byte(target, post_json=posted)}
                    # The download goes on a while after the client hung up: its S3 requests must not
                    # be counted against the next measurement.
                    _quiet(delayed, latency)
                    return reading
                return run

            got = interleaved(runs, {
                "post": counted(lambda: curl(server.url("/bundle"), post_json=body), pid, count),
                "post first": first(server.url("/bundle"), body),
                "get": counted(lambda: curl(url), pid, count),
                "prefix": counted(lambda: curl(server.url("/bundle"), post_json=prefix_body), pid, count),
                "prefix first": first(server.url("/bundle"), prefix_body),
                "get first": first(url),
                "before": counted(lambda: curl(before.url("/bundle"), post_json=body), before_pid, count),
                "before first": first(before.url("/bundle"), body),
                "big": counted(lambda: curl(server.url("/bundle"), post_json=big_body), pid, big_count),
                "big first": first(server.url("/bundle"), big_body),
                "big before": counted(lambda: curl(before.url("/bundle"), post_json=big_body), before_pid,
                                      big_count),
                "big before first": first(before.url("/bundle"), big_body),
                "limit": lambda: {"s": curl_many(urls, parallel).wall},
                "big limit": lambda: {"s": curl_many(big_urls, parallel).wall},
                "boto3": lambda: {"s": _get_all(delayed.base_url, bucket, keys, parallel)},
                "moto": lambda: {"s": curl_many(direct_urls, parallel).wall},
                "proxy0": lambda: {"s": curl_many(zero_urls, parallel).wall},
            })
    finally:
        zero.stop()
        delayed.stop()
        moto.stop()
    for limit_name, rows in (("limit", (("post", "POST /bundle"), ("get", "GET /:id (stored zip)"),
                                        ("prefix", "POST /bundle of their prefix (ListObjectsV2)"),
                                        ("before", "POST /bundle, PREFLIGHT_FETCH_BYTES=0 (as before)"))),
                             ("big limit", (("big", "POST /bundle"),
                                            ("big before", "POST /bundle, PREFLIGHT_FETCH_BYTES=0 (as before)")))):
        limit = got[limit_name]["s"]
        objects = f"{count} x {size // 1024} KiB" if limit_name == "limit" else f"{big_count} x {big_size // 1024} KiB"
        table.add(f"{objects}: limit, GetObject each ({ms}), curl", 1, "-", limit, "-", limit, "1x")
        if limit_name == "limit":
            boto = got["boto3"]["s"]
            table.add(f"{objects}: GetObject each ({ms}), boto3 threads", 1, "-", boto, "-", limit,
                      f"{boto / limit:.2f}x")
        for name, label in rows:
            table.add(f"{objects}: {label}", got[name]["requests"], got[f"{name} first"]["first"], got[name]["s"],
                      got[name]["cpu"] * 1000, limit, f"{got[name]['s'] / limit:.2f}x")
    table.notes.append(
        f"median of {runs} interleaved runs after one warm-up; one gevent worker per service (two services: "
        "holding, and PREFLIGHT_FETCH_BYTES=0); client: curl (first byte: http.client, a request of its own that "
        "hangs up at the status line). The limit: one curl process fetching presigned GetObject URLs of the same "
        f"objects, {parallel} at once, through the same proxy (beside it, boto3 GetObject from {parallel} threads, "
        "bound by the client's own CPU). S3 requests counted by nginx (stub_status) in front of moto server "
        "(ThreadedMotoServer on 127.0.0.1), latency added by nginx's echo module. The proxy's own cost (curl, "
        f"{parallel} at once, small objects): straight from moto {got['moto']['s']:.3g} s, through nginx at 0 ms "
        f"{got['proxy0']['s']:.3g} s. Worker CPU: utime + stime of the service's worker over the request, per "
        f"object, in clock ticks ({1000 / os.sysconf('SC_CLK_TCK'):.0f} ms). moto answers far slower than S3 "
        "(Python, one thread per connection): the times bound little; the request count is the measure. Target "
        "(issue 16): one request per object of at most PREFLIGHT_FETCH_BYTES (64 KiB); a bigger one costs two "
        "(its first bytes, then the rest with If-Match).")
    return table
