"""The job-state table in DynamoDB: one item per job, changed only by conditional writes.

SQS moves messages; this table says what each job *is*: state, attempts, lease token and
expiry, failures, logs, progress, result. Every transition is one ``UpdateItem`` whose
condition checks the lease token (a stale settlement is refused), the job id (duplicate
enqueues are refused) or the state, so the table is the arbiter whenever SQS delivers a
message twice.

Schema (created when missing, if the URL says ``create=true``)::

    key  k   "<prefix><queue>/<job id>"          (string partition key)
    GSI  by_state:  gs "<prefix><queue>|<bucket>"  gt  <number>   (sparse; few attributes)

Buckets: ``ready`` (queued, its message receivable; gt = run_at), ``parked`` (queued, its
message held back until its run_at by a delay or ChangeMessageVisibility; gt = run_at),
``active`` (gt = lease expiry), ``completed`` and ``dead`` (gt = finish time). Queues are
registered in the same table under ``gs = "#queues|<prefix>"`` so ``stats`` can list them.

A deleted job leaves a *tombstone* (state ``gone``, outside the index, removed by DynamoDB's
TTL on ``expires`` after a day): a late copy of its message is then known to be stale and
dropped at once, and the job id can be used again.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Iterable, Sequence
from typing import Any

from conveyor.engines.sqs.aws import Clients, error_code
from conveyor.engines.sqs.options import SQSOptions
from conveyor.errors import ConfigurationError

log = logging.getLogger("conveyor.engines.sqs")

INDEX = "by_state"
READY, PARKED, ACTIVE, COMPLETED, DEAD = "ready", "parked", "active", "completed", "dead"
#: Attributes copied into the index: enough to list, sort, filter and count without reading
#: items, and small, since every index write is billed by size.
PROJECTED = ["id", "pri", "created", "started", "task", "pref", "rref", "state", "vis", "rt", "msg"]
#: DynamoDB's limits per BatchGetItem and BatchWriteItem request.
GET_BATCH, WRITE_BATCH = 100, 25
#: Seconds to wait for a table created by this engine to become ACTIVE.
CREATE_TIMEOUT = 120.0
#: Every attribute of a job's item but its key, state and message nonce.
JOB_ATTRIBUTES = [
    "q",
    "id",
    "task",
    "payload",
    "pref",
    "pri",
    "run_at",
    "created",
    "opts",
    "redriven",
    "attempts",
    "progress",
    "result",
    "rref",
    "failures",
    "logs",
    "tok",
    "lexp",
    "wk",
    "rh",
    "rc",
    "rt",
    "vis",
    "gs",
    "gt",
    "started",
    "finished",
]
#: The state of a deleted job's tombstone, and how long DynamoDB keeps it (TTL attribute).
GONE = "gone"
TOMBSTONE_SECONDS = 86_400
TTL_ATTRIBUTE = "expires"
_NAME_TOKEN = re.compile(r"#(\w+)")
_VALUE_TOKEN = re.compile(r":\w+")

Item = dict[str, Any]


class StateTable:
    """Typed access to the state table: items are plain dicts of Python values."""

    def __init__(self, options: SQSOptions, clients: Clients) -> None:
        assert options.state_table is not None
        self.name = options.state_table
        self.options = options
        self.clients = clients

    @property
    def db(self) -> Any:
        """The DynamoDB client."""
        return self.clients.dynamodb

    # -- schema -----------------------------------------------------------------------------

    async def ensure(self) -> None:
        """Check the table exists (create it when ``create`` is on)."""
        try:
            described = await self.db.describe_table(TableName=self.name)
        except Exception as exc:
            if error_code(exc) != "ResourceNotFoundException":
                raise
            if not self.options.create:
                raise ConfigurationError(
                    f"DynamoDB table {self.name!r} does not exist; create it (see docs/aws.md) "
                    "or add create=true to the engine URL"
                ) from None
            await self._create()
            return
        indexes = {i["IndexName"] for i in described["Table"].get("GlobalSecondaryIndexes", [])}
        if INDEX not in indexes:
            raise ConfigurationError(
                f"DynamoDB table {self.name!r} has no {INDEX!r} index; it was not made for "
                "Conveyor (see docs/aws.md for the schema)"
            )

    async def _create(self) -> None:
        try:
            await self.db.create_table(
                TableName=self.name,
                BillingMode="PAY_PER_REQUEST",
                AttributeDefinitions=[
                    {"AttributeName": "k", "AttributeType": "S"},
                    {"AttributeName": "gs", "AttributeType": "S"},
                    {"AttributeName": "gt", "AttributeType": "N"},
                ],
                KeySchema=[{"AttributeName": "k", "KeyType": "HASH"}],
                GlobalSecondaryIndexes=[
                    {
                        "IndexName": INDEX,
                        "KeySchema": [
                            {"AttributeName": "gs", "KeyType": "HASH"},
                            {"AttributeName": "gt", "KeyType": "RANGE"},
                        ],
                        "Projection": {"ProjectionType": "INCLUDE", "NonKeyAttributes": PROJECTED},
                    }
                ],
            )
        except Exception as exc:
            if error_code(exc) != "ResourceInUseException":  # another process created it
                raise
        log.info("created DynamoDB table %s", self.name)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + CREATE_TIMEOUT
        while loop.time() < deadline:
            described = await self.db.describe_table(TableName=self.name)
            if described["Table"]["TableStatus"] == "ACTIVE":
                break
            await asyncio.sleep(1.0)
        else:
            raise ConfigurationError(f"DynamoDB table {self.name!r} did not become ACTIVE in time")
        try:
            await self.db.update_time_to_live(
                TableName=self.name,
                TimeToLiveSpecification={"Enabled": True, "AttributeName": TTL_ATTRIBUTE},
            )
        except Exception as exc:  # another process enabled it first, or no permission
            log.warning("could not enable TTL on %s.%s: %s", self.name, TTL_ATTRIBUTE, exc)

    # -- single items -----------------------------------------------------------------------

    async def put_new(self, item: Item) -> tuple[bool, Item | None]:
        """Store ``item`` unless its key holds a live item (a tombstone may be replaced):
        ``(True, None)`` or ``(False, existing)``."""
        return await self.put(item, "attribute_not_exists(#k) OR #state = :gone", {":gone": GONE})

    async def put(
        self, item: Item, condition: str, values: dict[str, Any]
    ) -> tuple[bool, Item | None]:
        """Conditional ``PutItem`` replacing the whole item: ``(True, old item or None)`` or
        ``(False, current or None)``."""
        try:
            response = await self.db.put_item(
                TableName=self.name,
                Item=marshal_item(item),
                ConditionExpression=condition,
                ReturnValues="ALL_OLD",
                ReturnValuesOnConditionCheckFailure="ALL_OLD",
                **_expression_args(condition, values),
            )
        except Exception as exc:
            if error_code(exc) != "ConditionalCheckFailedException":
                raise
            return False, _old(exc)
        old = response.get("Attributes")
        return True, None if not old else unmarshal_item(old)

    async def update(
        self,
        key: str,
        update: str,
        condition: str,
        values: dict[str, Any],
        returns: str = "ALL_NEW",
    ) -> tuple[bool, Item | None]:
        """Conditional ``UpdateItem``.

        ``(True, item)`` with the item as ``returns`` asks (``ALL_NEW``/``ALL_OLD``), or
        ``(False, current)`` when the condition failed (``current`` is ``None`` if the item
        does not exist).
        """
        try:
            response = await self.db.update_item(
                TableName=self.name,
                Key={"k": {"S": key}},
                UpdateExpression=update,
                ConditionExpression=condition,
                ReturnValues=returns,
                ReturnValuesOnConditionCheckFailure="ALL_OLD",
                **_expression_args(update + " " + condition, values),
            )
        except Exception as exc:
            if error_code(exc) != "ConditionalCheckFailedException":
                raise
            return False, _old(exc)
        return True, unmarshal_item(response.get("Attributes", {}))

    async def bury(
        self, key: str, condition: str, values: dict[str, Any], now: float
    ) -> tuple[bool, Item | None]:
        """Conditionally turn a job's item into its tombstone: ``(True, old item)`` or
        ``(False, current or None)``."""
        removed = ", ".join(f"#{a}" for a in JOB_ATTRIBUTES)
        return await self.update(
            key,
            f"SET #state = :gone, #{TTL_ATTRIBUTE} = :expires REMOVE {removed}",
            condition,
            {**values, ":gone": GONE, ":expires": int(now) + TOMBSTONE_SECONDS},
            returns="ALL_OLD",
        )

    async def get(self, key: str) -> Item | None:
        """One item, strongly consistent."""
        response = await self.db.get_item(
            TableName=self.name, Key={"k": {"S": key}}, ConsistentRead=True
        )
        raw = response.get("Item")
        return None if raw is None else unmarshal_item(raw)

    # -- many items -------------------------------------------------------------------------

    async def get_many(self, keys: Sequence[str]) -> dict[str, Item]:
        """Items by key (missing ones left out), 100 per request."""
        found: dict[str, Item] = {}
        unique = list(dict.fromkeys(keys))
        for i in range(0, len(unique), GET_BATCH):
            pending: dict[str, Any] = {
                self.name: {"Keys": [{"k": {"S": k}} for k in unique[i : i + GET_BATCH]]}
            }
            pending[self.name]["ConsistentRead"] = True
            while pending:
                response = await self.db.batch_get_item(RequestItems=pending)
                for raw in response.get("Responses", {}).get(self.name, []):
                    item = unmarshal_item(raw)
                    found[item["k"]] = item
                pending = response.get("UnprocessedKeys") or {}
                if pending:
                    await asyncio.sleep(0.05)  # throttled: back off briefly and ask again
        return found

    async def bury_many(self, items: Sequence[Item], now: float) -> None:
        """Replace items by tombstones unconditionally, 25 per request."""
        for i in range(0, len(items), WRITE_BATCH):
            requests = [
                {"PutRequest": {"Item": marshal_item(tombstone(item, now))}}
                for item in items[i : i + WRITE_BATCH]
            ]
            pending: dict[str, Any] = {self.name: requests}
            while pending:
                response = await self.db.batch_write_item(RequestItems=pending)
                pending = response.get("UnprocessedItems") or {}
                if pending:
                    await asyncio.sleep(0.05)

    async def query(
        self,
        gs: str,
        *,
        low: float | None = None,
        high: float | None = None,
        forward: bool = True,
        limit: int | None = None,
    ) -> list[Item]:
        """Index entries of one bucket with ``low <= gt <= high``, in ``gt`` order."""
        condition, values = _range(gs, low, high)
        items: list[Item] = []
        kwargs: dict[str, Any] = {
            "TableName": self.name,
            "IndexName": INDEX,
            "KeyConditionExpression": condition,
            "ScanIndexForward": forward,
            **_expression_args(condition, values),
        }
        while True:
            if limit is not None:
                kwargs["Limit"] = max(1, limit - len(items))
            response = await self.db.query(**kwargs)
            items.extend(unmarshal_item(raw) for raw in response.get("Items", []))
            last = response.get("LastEvaluatedKey")
            if not last or (limit is not None and len(items) >= limit):
                return items[:limit] if limit is not None else items
            kwargs["ExclusiveStartKey"] = last

    async def count(self, gs: str, *, low: float | None = None, high: float | None = None) -> int:
        """How many index entries one bucket holds in a ``gt`` range."""
        condition, values = _range(gs, low, high)
        kwargs: dict[str, Any] = {
            "TableName": self.name,
            "IndexName": INDEX,
            "KeyConditionExpression": condition,
            "Select": "COUNT",
            **_expression_args(condition, values),
        }
        total = 0
        while True:
            response = await self.db.query(**kwargs)
            total += int(response.get("Count", 0))
            last = response.get("LastEvaluatedKey")
            if not last:
                return total
            kwargs["ExclusiveStartKey"] = last

    # -- queue registry ---------------------------------------------------------------------

    def registry(self) -> str:
        """The index partition that lists this prefix's queues."""
        return f"#queues|{self.options.prefix}"

    async def register(self, queue: str, base: str, now: float) -> None:
        """Record that ``queue`` exists (idempotent)."""
        item = {"k": f"#queue/{base}", "gs": self.registry(), "gt": now, "id": queue}
        await self.put_new(item)

    async def queues(self) -> list[str]:
        """Every registered queue of this prefix."""
        return sorted({str(i["id"]) for i in await self.query(self.registry())})


# -- marshalling ------------------------------------------------------------------------------


def tombstone(item: Item, now: float) -> Item:
    """What is left of a deleted job: its key, its last message's nonce, an expiry."""
    return {
        "k": item["k"],
        "state": GONE,
        "msg": item.get("msg"),
        TTL_ATTRIBUTE: int(now) + TOMBSTONE_SECONDS,
    }


def marshal(value: Any) -> dict[str, Any]:
    """A Python value as a DynamoDB attribute value (str, number, bytes, bool, None, lists)."""
    if value is None:
        return {"NULL": True}
    if isinstance(value, bool):
        return {"BOOL": value}
    if isinstance(value, str):
        return {"S": value}
    if isinstance(value, bytes):
        return {"B": value}
    if isinstance(value, int | float):
        return {"N": repr(value) if isinstance(value, float) else str(value)}
    if isinstance(value, list | tuple):
        return {"L": [marshal(v) for v in value]}
    raise TypeError(f"cannot store {type(value).__name__} in DynamoDB")


def unmarshal(value: dict[str, Any]) -> Any:
    """The Python value of a DynamoDB attribute value."""
    (kind, raw), *_ = value.items()
    if kind == "S":
        return raw
    if kind == "N":
        text = str(raw)
        return float(text) if any(c in text for c in ".eE") else int(text)
    if kind == "B":
        return bytes(raw)
    if kind == "BOOL":
        return bool(raw)
    if kind == "NULL":
        return None
    if kind == "L":
        return [unmarshal(v) for v in raw]
    if kind == "M":
        return {k: unmarshal(v) for k, v in raw.items()}
    raise TypeError(f"unexpected DynamoDB type {kind}")


def marshal_item(item: Item) -> dict[str, Any]:
    """An item of Python values (``None`` values left out) in DynamoDB form."""
    return {k: marshal(v) for k, v in item.items() if v is not None}


def unmarshal_item(raw: dict[str, Any]) -> Item:
    """An item in DynamoDB form as Python values."""
    return {k: unmarshal(v) for k, v in raw.items()}


def _old(exc: BaseException) -> Item | None:
    raw = getattr(exc, "response", {}).get("Item")
    return None if not raw else unmarshal_item(raw)


def _expression_args(text: str, values: dict[str, Any]) -> dict[str, Any]:
    """ExpressionAttributeNames for every ``#name`` in ``text`` (every attribute is aliased,
    so DynamoDB's reserved words never bite) and the ``:values`` it uses."""
    out: dict[str, Any] = {}
    names = {f"#{n}": n for n in _NAME_TOKEN.findall(text)}
    if names:
        out["ExpressionAttributeNames"] = names
    tokens = set(_VALUE_TOKEN.findall(text))
    used = {k: marshal(v) for k, v in values.items() if k in tokens}
    if used:
        out["ExpressionAttributeValues"] = used
    return out


def _range(gs: str, low: float | None, high: float | None) -> tuple[str, dict[str, Any]]:
    values: dict[str, Any] = {":gs": gs}
    condition = "#gs = :gs"
    if low is not None and high is not None:
        condition += " AND #gt BETWEEN :lo AND :hi"
        values.update({":lo": low, ":hi": high})
    elif low is not None:
        condition += " AND #gt >= :lo"
        values[":lo"] = low
    elif high is not None:
        condition += " AND #gt <= :hi"
        values[":hi"] = high
    return condition, values


def keys_of(items: Iterable[Item]) -> list[str]:
    """The table keys of index entries or items."""
    return [str(i["k"]) for i in items]
