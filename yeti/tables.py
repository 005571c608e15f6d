"""
The domain API of a table: validate, write durably, then publish.

REST, WebSocket and custom resources all write through L{TableAccess}, so
every write path publishes after its commit, in commit order, and a failed
write publishes nothing.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from twisted.internet.interfaces import IReactorTime

from yeti.errors import NotFound, ValidationError
from yeti.fiql import Query
from yeti.pubsub import PubSub
from yeti.records import new_key, stamp, validate_record
from yeti.schema import Table
from yeti.storage import Delete, Insert, IStorage, Patch, Put


class TableAccess:
    """Reads and writes of one table, with validation and notification."""

    def __init__(
        self, table: Table, storage: IStorage, pubsub: PubSub, clock: IReactorTime
    ) -> None:
        self.table = table
        self._storage = storage
        self._pubsub = pubsub
        self._clock = clock
        pk = table.primary_key
        self._keep_on_put = tuple(
            f.name for f in table.fields.values() if f.created_time and f.name != pk
        )

    @property
    def pubsub(self) -> PubSub:
        return self._pubsub

    def _now(self) -> datetime:
        return datetime.fromtimestamp(self._clock.seconds(), UTC)

    def _key_of(self, record: dict[str, Any]) -> str:
        return str(record[self.table.primary_key])

    # -- reads ---------------------------------------------------------

    async def get(self, key: str) -> dict[str, Any] | None:
        return await self._storage.get(self.table, key)

    async def query(self, query: Query) -> list[dict[str, Any]]:
        return await self._storage.query(self.table, query)

    # -- writes --------------------------------------------------------

    def _prepare(self, body: Any, key: Any = None, *, created: bool) -> dict[str, Any]:
        """Validate a full record, fill its key and timestamps."""
        record = validate_record(self.table, body)
        pk = self.table.primary_key
        if key is not None:
            if record.get(pk) is not None and str(record[pk]) != str(key):
                raise ValidationError(
                    f"field '{pk}' ({record[pk]!r}) does not match the id in the URL ({key!r})"
                )
            record[pk] = key
        elif record.get(pk) is None:
            if self.table.fields[pk].type == "Int":
                raise ValidationError(f"missing required field '{pk}'")
            record[pk] = new_key()
        return stamp(self.table, record, self._now(), created=created)

    async def create(self, body: Any) -> list[dict[str, Any]]:
        """
        Insert one record (a JSON object) or several (an array), atomically.

        @raise Conflict: a record with one of the ids exists already.
        """
        bodies = body if isinstance(body, list) else [body]
        if not bodies:
            raise ValidationError("an array of records must not be empty")
        records = [self._prepare(b, created=True) for b in bodies]
        keys = [self._key_of(r) for r in records]
        if len(set(keys)) != len(keys):
            raise ValidationError("the batch holds the same id twice")
        stored = await self._storage.write([Insert(self.table, r) for r in records])
        for record in stored:
            self._pubsub.notify_update(self.table.name, record[self.table.primary_key], record)
        return stored

    async def put(self, key: Any, body: Any) -> tuple[dict[str, Any], bool]:
        """Replace (or create) the record C{key}; return it and whether it was new."""
        record = self._prepare(body, key, created=True)
        [(stored, created)] = await self._storage.write(
            [Put(self.table, record, keep=self._keep_on_put)]
        )
        self._pubsub.notify_update(self.table.name, stored[self.table.primary_key], stored)
        return stored, created

    async def patch(self, key: Any, changes: Any) -> dict[str, Any]:
        """Merge C{changes} into the record C{key}."""
        changes = validate_record(self.table, changes, partial=True)
        pk = self.table.primary_key
        if pk in changes and str(changes[pk]) != str(key):
            raise ValidationError(f"field '{pk}' cannot be changed")
        changes.pop(pk, None)
        changes = stamp(self.table, changes, self._now(), created=False)
        [stored] = await self._storage.write([Patch(self.table, str(key), changes)])
        self._pubsub.notify_update(self.table.name, stored[pk], stored)
        return stored

    async def delete(self, key: Any) -> dict[str, Any]:
        """Delete the record C{key}; return what was deleted."""
        [deleted] = await self._storage.write([Delete(self.table, str(key))])
        self._pubsub.notify_delete(self.table.name, deleted[self.table.primary_key])
        return deleted

    async def require(self, key: str) -> dict[str, Any]:
        """Return the record C{key} or raise L{NotFound}."""
        record = await self.get(key)
        if record is None:
            raise NotFound(f"{self.table.name} '{key}' not found")
        return record
