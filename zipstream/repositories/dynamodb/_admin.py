"""The table itself: create it with its TTL (`migrate`, `create-table`), and say whether it is usable.

Items need no schema: a new item kind (the served and unstable records, say) needs no migration here.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from botocore.exceptions import ClientError

from ...errors import SchemaNotReady
from ..contract import SchemaConflict, SchemaState
from ._calls import TableCalls
from ._errors import error_code
from ._items import TTL_ATTRIBUTE

log = logging.getLogger(__name__)


def migrate(calls: TableCalls) -> None:
    """Create the table (on-demand capacity) and turn on TTL; does nothing that is done already."""
    client, table = calls.client, calls.table
    with calls.errors("create-table"):
        try:
            calls.call(
                client.create_table,
                TableName=table,
                AttributeDefinitions=[
                    {"AttributeName": "pk", "AttributeType": "S"},
                    {"AttributeName": "sk", "AttributeType": "S"},
                ],
                KeySchema=[
                    {"AttributeName": "pk", "KeyType": "HASH"},
                    {"AttributeName": "sk", "KeyType": "RANGE"},
                ],
                BillingMode="PAY_PER_REQUEST",
            )
            log.info("created DynamoDB table %s", table)
        except ClientError as error:
            if error_code(error) != "ResourceInUseException":
                raise
        client.get_waiter("table_exists").wait(TableName=table, WaiterConfig={"Delay": 1, "MaxAttempts": 120})
        _check_keys(calls.call(client.describe_table, TableName=table)["Table"], table)
        if not _ttl_on(calls):
            try:
                calls.call(
                    client.update_time_to_live,
                    TableName=table,
                    TimeToLiveSpecification={"Enabled": True, "AttributeName": TTL_ATTRIBUTE},
                )
                log.info("enabled TTL on %s.%s", table, TTL_ATTRIBUTE)
            except ClientError as error:
                # Another `migrate` enabled it between our look and our update: that is success.
                if error_code(error) != "ValidationException" or not _ttl_on(calls):
                    raise


def schema_state(calls: TableCalls) -> SchemaState:
    """MISSING until the table exists and is ACTIVE; OUTDATED without TTL; SchemaConflict if keyed otherwise."""
    try:
        with calls.errors("describe-table"):
            table = calls.call(calls.client.describe_table, TableName=calls.table)["Table"]
            ttl_on = _ttl_on(calls)
    except SchemaNotReady:
        return SchemaState.MISSING
    if table.get("TableStatus") not in ("ACTIVE", "UPDATING"):  # CREATING (another migrate) or DELETING
        return SchemaState.MISSING
    _check_keys(table, calls.table)
    return SchemaState.CURRENT if ttl_on else SchemaState.OUTDATED


def ping(calls: TableCalls) -> None:
    with calls.errors("describe-table"):
        calls.call(calls.client.describe_table, TableName=calls.table)


def _ttl_on(calls: TableCalls) -> bool:
    ttl = calls.call(calls.client.describe_time_to_live, TableName=calls.table).get("TimeToLiveDescription", {})
    return ttl.get("TimeToLiveStatus") in ("ENABLED", "ENABLING")


def _check_keys(description: Mapping[str, Any], table: str) -> None:
    keys = description.get("KeySchema", [])
    if sorted((key["AttributeName"], key["KeyType"]) for key in keys) != [("pk", "HASH"), ("sk", "RANGE")]:
        raise SchemaConflict(
            f"DynamoDB table {table!r} exists with another key schema ({keys}); set TABLE_NAME to "
            "a new name (bundles of the Node ZipStream are not imported)"
        )
