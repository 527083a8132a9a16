"""The DynamoDB backend of the repository contract suite: a fresh table per test on the moto server."""

from __future__ import annotations

import uuid

import pytest

from zipstream.aws import dynamodb_client
from zipstream.config import Config
from zipstream.repositories import BundleRepository
from zipstream.repositories.dynamodb import DynamoRepository

from .moto import REGION


def dynamodb_repository(table: str | None = None) -> DynamoRepository:
    """A DynamoRepository on a table of its own (not yet created: call migrate())."""
    config = Config.from_env({
        "DB_INTERFACE": "dynamodb",
        "TABLE_NAME": table or "t_" + uuid.uuid4().hex[:12],
        "AWS_REGION": REGION,
        "FS_INTERFACES": "https",
        # moto answers one request at a time (AtomicMotoServer): fifty concurrent appends queue there
        # for seconds, which DynamoDB never does; the contract is about what is stored, not how fast.
        "DB_TIMEOUT": "30",
    })
    return DynamoRepository(config)


def dynamodb_backend(request: pytest.FixtureRequest) -> BundleRepository:
    """Factory for tests/test_repositories.py: needs the session's moto server."""
    request.getfixturevalue("moto_server")
    repository = dynamodb_repository()

    def drop() -> None:  # runs after the suite's fixture has closed the repository
        client = dynamodb_client(repository.config)
        try:
            client.delete_table(TableName=repository.table)
        except client.exceptions.ResourceNotFoundException:
            pass  # never migrated
        finally:
            client.close()

    request.addfinalizer(drop)
    return repository
