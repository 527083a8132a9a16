"""B9: S3 requests per small object, counted at an nginx reverse proxy that adds latency in front of moto server."""

from __future__ import annotations

import concurrent.futures
import logging
import os
import time
from pathlib import Path
from typing import Any

import boto3
import requests
from botocore.config import Config

from tests.support.moto import REGION
from tests.support.nginx import Nginx

from .harness import Table, curl, interleaved, json_body, service, time_to_first_byte

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


def s3_requests(tmp: Path, runs: int, count: int, size: int, latency: float, parallel: int,
                env: dict[str, str]) -> Table:
    """B9: a bundle of `count` small S3 objects through POST /bundle and GET /:id; S3 requests per object,
    first byte and total, against GetObject of each object from the bench (one request each)."""
    from moto.moto_server.threaded_moto_server import ThreadedMotoServer

    from tests.support.live import free_port

    ms = f"{latency * 1000:.0f} ms"
    table = Table("b9_s3_requests", f"B9 S3: {count} objects x {size // 1024} KiB, {ms} latency per S3 request "
                  "(moto server behind nginx)",
                  ["client", "S3 requests per object", "first byte s", "total s",
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
        for key in keys:
            client.put_object(Bucket=bucket, Key=key, Body=os.urandom(size))
        settings = {**CREDENTIALS, "AWS_ENDPOINT_URL": delayed.base_url, "FS_INTERFACES": "s3,https",
                    "S3_PATH_STYLE": "true", "S3_BUCKETS": bucket, **env}
        srcs = [f"s3://{bucket}/{key}" for key in keys]
        body = json_body(tmp, srcs)
        with service(tmp, settings) as server, requests.Session() as session:
            response = session.post(server.url("/"), json={"files": [{"src": src} for src in srcs]}, timeout=120)
            response.raise_for_status()
            url = server.url(f"/{response.json()['id']}")
            curl(url)  # warm-up: connections, clients

            one_off = server.url("/bundle")

            def counted(action: str) -> dict[str, float]:
                before = delayed.requests_served()
                fetched = curl(url) if action == "get" else curl(one_off, post_json=body)
                return {"s": fetched.wall, "requests": delayed.requests_served() - before}

            got = interleaved(runs, {
                "get": lambda: counted("get"),
                "post": lambda: counted("post"),
                "get first": lambda: {"first": time_to_first_byte(url)},
                "post first": lambda: {"first": time_to_first_byte(one_off, post_json=body)},
                "limit": lambda: {"s": _get_all(delayed.base_url, bucket, keys, parallel)},
                "moto": lambda: {"s": _get_all(direct, bucket, keys, parallel)},
                "proxy0": lambda: {"s": _get_all(zero.base_url, bucket, keys, parallel)},
            })
    finally:
        zero.stop()
        delayed.stop()
        moto.stop()
    limit = got["limit"]["s"]
    table.add(f"limit: GetObject each ({ms})", 1, "-", limit, limit, "1x")
    for name, label in (("get", "GET /:id (stored zip)"), ("post", "POST /bundle")):
        table.add(label, got[name]["requests"] / count, got[f"{name} first"]["first"], got[name]["s"], limit,
                  f"{got[name]['s'] / limit:.2f}x")
    table.notes.append(f"median of {runs} interleaved runs after one warm-up; client: curl (first byte: "
                       "http.client, a request of its own that hangs up at the status line); the limit's client: "
                       f"boto3 GetObject from {parallel} threads. S3 requests counted by nginx (stub_status) in "
                       "front of moto server (ThreadedMotoServer on 127.0.0.1), latency added by nginx's echo "
                       f"module. The proxy's own cost: GetObject of every object, {parallel} at once, straight "
                       f"from moto {got['moto']['s']:.3g} s, through nginx at 0 ms {got['proxy0']['s']:.3g} s. "
                       "moto answers far slower than S3: the times bound little; the request count is the "
                       "measure. Target (issue 16): one request per object of at most PREFLIGHT_FETCH_BYTES.")
    return table
