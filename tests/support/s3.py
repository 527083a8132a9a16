"""A test bucket on moto with the objects the S3 and DynamoDB tests stream: `store` fixture and helpers."""

from __future__ import annotations

import io
import os
import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING

import boto3
import pytest
from boto3.s3.transfer import TransferConfig

from .moto import REGION, MotoServer

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

UTF8_KEY = "dossier/été — ünï cødé +plus%20 100%.txt"
MANY = 1005  # more than one ListObjectsV2 page (1,000 keys)


class Store:
    """The test bucket and what was put in it."""

    def __init__(self, client: S3Client, bucket: str) -> None:
        self.client = client
        self.bucket = bucket
        self.data: dict[str, bytes] = {}

    def put(self, key: str, data: bytes, **extra: object) -> None:
        self.client.put_object(Bucket=self.bucket, Key=key, Body=data, **extra)  # type: ignore[arg-type]
        self.data[key] = data

    def src(self, key: str) -> str:
        return f"s3://{self.bucket}/{key}"


@pytest.fixture(scope="module")
def store(moto_server: MotoServer) -> Store:
    client = boto3.client("s3", region_name=REGION)
    bucket = "zs-" + uuid.uuid4().hex[:12]
    client.create_bucket(Bucket=bucket)
    store = Store(client, bucket)
    store.put("empty.bin", b"")
    store.put("crc.bin", os.urandom(70_000), ChecksumAlgorithm="CRC32")
    store.put(UTF8_KEY, "contenu été\n".encode())
    big = os.urandom(9 * 1024 * 1024)
    # Two 8 MiB-or-less parts: the object's checksum is a composite of the parts, not the file's CRC.
    client.upload_fileobj(io.BytesIO(big), bucket, "big.bin", ExtraArgs={"ChecksumAlgorithm": "CRC32"},
                          Config=TransferConfig(multipart_threshold=8 * 1024 * 1024,
                                                multipart_chunksize=8 * 1024 * 1024))
    store.data["big.bin"] = big
    store.put("many/", b"")  # a "folder" marker, as the S3 console creates them
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda i: store.put(f"many/{i:04d}.txt", f"file {i}\n".encode()), range(MANY)))
    store.put("many/sub/deep é.txt", b"deep")
    # A small folder for the end-to-end downloads (each member is one GET against moto).
    store.put("few/", b"")
    for key in ("few/a.txt", "few/b/c é.txt", "few/z+%.txt"):
        store.put(key, key.encode() * 100)
    return store


def expected_bundle(store: Store) -> tuple[list[dict[str, str]], dict[str, bytes]]:
    """The `files` of a bundle of `store`'s objects, and the entries (name -> bytes) its zip must hold."""
    files = [
        {"src": store.src("empty.bin")},
        {"src": store.src("big.bin"), "dst": "big.bin"},
        {"src": store.src("crc.bin")},
        {"src": store.src(UTF8_KEY)},
        {"src": store.src("few/"), "dst": "folder"},
    ]
    expected = {
        "empty.bin": b"",
        "big.bin": store.data["big.bin"],
        "crc.bin": store.data["crc.bin"],
        UTF8_KEY: store.data[UTF8_KEY],
    }
    for key in ("few/a.txt", "few/b/c é.txt", "few/z+%.txt"):
        expected["folder/" + key.removeprefix("few/")] = store.data[key]
    return files, expected
