"""
Resources: the code behind an application's URLs.

Every exported table is served by a L{TableResource}, which implements the
REST verbs and the WebSocket incoming-message handler on top of
L{TableAccess}.  An application may list Python modules under C{resources:}
in its C{config.yaml}; the L{Resource} subclasses defined there are loaded by
L{load_resources}.  A subclass of L{TableResource} whose C{table} names one of
the app's tables replaces that table's default resource (overriding only the
methods it defines); any other L{Resource} is served at C{/{app_id}/{name}}.

Handlers are C{async} methods.  They return a L{Response}, or any JSON value
(sent with status 200), and raise L{yeti.errors.YetiError} for errors.
"""

from __future__ import annotations

import importlib.util
import inspect
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

import orjson

from yeti.errors import BadRequest, ConfigError, MethodNotAllowed, NotFound
from yeti.fiql import Query, parse_query
from yeti.pubsub import RETAINED, Event, PubSub
from yeti.records import key_from_path
from yeti.sqlfilter import select_fields
from yeti.tables import TableAccess

if TYPE_CHECKING:
    from yeti.config import AppConfig

HTTP_METHODS = ("get", "post", "put", "patch", "delete")


@dataclass
class Request:
    """What a handler sees of an HTTP request."""

    method: str
    path_id: str | None
    raw_query: str
    headers: dict[str, str]
    body: bytes = b""

    def json(self) -> Any:
        """The body parsed as JSON; L{BadRequest} if it is not."""
        if not self.body:
            raise BadRequest("request body is empty; expected JSON")
        try:
            return orjson.loads(self.body)
        except orjson.JSONDecodeError as e:
            raise BadRequest(f"invalid JSON: {e}") from None


@dataclass
class Response:
    """A handler's answer.  C{body} is a JSON value, or C{bytes} sent as is."""

    status: int = 200
    body: Any = None
    headers: dict[str, str] = field(default_factory=dict)
    content_type: str = "application/json"


class Connection(Protocol):
    """A WebSocket connection, as seen by a resource's message handlers."""

    path_id: str | None

    def send(self, message: Any) -> None:
        """Send a JSON message."""

    def send_raw(self, payload: bytes, is_binary: bool) -> None:
        """Send a frame as is."""

    def send_error(self, error: str) -> None:
        """Send C{{"message_type": "Error", "error": error}}."""

    def subscribe(self, topic: str) -> None: ...

    def unsubscribe(self, topic: str) -> None: ...

    def close(self, code: int, reason: str) -> None: ...


@dataclass
class AppContext:
    """What an application's resources may use."""

    app_id: str
    tables: dict[str, TableAccess]
    pubsub: PubSub
    custom: dict[str, Any]

    def table(self, name: str) -> TableAccess:
        try:
            return self.tables[name]
        except KeyError:
            raise NotFound(f"table '{name}' not found") from None


class Resource:
    """
    Base of custom resources.

    @cvar name: URL segment (default: the class name).
    @cvar ws: accept WebSocket connections.
    @cvar raw_messages: hand WebSocket frames to L{on_raw_message} undecoded
        instead of parsing them as JSON.
    """

    name: ClassVar[str] = ""
    ws: ClassVar[bool] = False
    sse: ClassVar[bool] = False
    raw_messages: ClassVar[bool] = False

    def __init__(self, app: AppContext) -> None:
        self.app = app

    @classmethod
    def url_name(cls) -> str:
        return cls.name or cls.__name__

    @property
    def ws_enabled(self) -> bool:
        return self.ws

    @property
    def sse_enabled(self) -> bool:
        return self.sse

    def allowed_methods(self, path_id: str | None) -> list[str]:
        """The HTTP methods this resource implements on a URL, upper case."""
        return [m.upper() for m in HTTP_METHODS if callable(getattr(self, m, None))]

    def topic(self, path_id: str | None) -> str | None:
        """The PubSub topic a stream on this URL follows (None: no stream)."""
        return None

    async def retained(self, path_id: str | None) -> Event | None:
        """The C{Retained} event sent first to a record-level stream, if any."""
        return None

    async def on_open(self, conn: Connection) -> None:
        """Called when a WebSocket connection opens."""

    async def on_message(self, conn: Connection, message: dict[str, Any]) -> None:
        """A JSON object from a WebSocket client that is not a PubSub action."""
        raise BadRequest("this resource does not accept messages")

    async def on_raw_message(self, conn: Connection, payload: bytes, is_binary: bool) -> None:
        """A frame, undecoded (only when C{raw_messages} is set)."""


class TableResource(Resource):
    """
    The default resource of an exported table: REST CRUD, streams of the
    table and record topics, and incoming messages stored like a PUT.

    @cvar table: the table a subclass extends (default: the class name).
    """

    table: ClassVar[str] = ""

    def __init__(self, app: AppContext, access: TableAccess) -> None:
        super().__init__(app)
        self.access = access

    @classmethod
    def table_name(cls) -> str:
        return cls.table or cls.__name__

    @property
    def ws_enabled(self) -> bool:
        return self.access.table.ws

    @property
    def sse_enabled(self) -> bool:
        return self.access.table.sse

    def key(self, path_id: str) -> Any:
        """The typed primary key for an id taken from a URL."""
        return key_from_path(self.access.table, path_id)

    def topic(self, path_id: str | None) -> str:
        name = self.access.table.name
        return name if path_id is None else f"{name}/{self.key(path_id)}"

    async def retained(self, path_id: str | None) -> Event | None:
        if path_id is None:
            return None
        key = self.key(path_id)
        record = await self.access.get(str(key))
        if record is None:
            return None
        return self.app.pubsub.event(RETAINED, self.topic(path_id), key, record)

    def _query(self, request: Request) -> Query:
        return parse_query(self.access.table, request.raw_query)

    async def get(self, request: Request) -> Any:
        query = self._query(request)
        if request.path_id is None:
            records = await self.access.query(query)
            if query.select is not None:
                records = [select_fields(r, query.select) for r in records]
            return records
        record = await self.access.require(str(self.key(request.path_id)))
        if query.select is not None:
            record = select_fields(record, query.select)
        return record

    async def post(self, request: Request) -> Response:
        if request.path_id is not None:
            raise _method_not_allowed(self, "POST", request)
        body = request.json()
        records = await self.access.create(body)
        pk = self.access.table.primary_key
        if isinstance(body, list):
            ids = [r[pk] for r in records]
            return Response(201, {"message": "Records created", "ids": ids})
        return Response(201, {"message": "Record created", "id": records[0][pk]})

    async def put(self, request: Request) -> Response:
        if request.path_id is None:
            raise _method_not_allowed(self, "PUT", request)
        record, created = await self.access.put(self.key(request.path_id), request.json())
        return Response(201 if created else 200, record)

    async def patch(self, request: Request) -> Any:
        if request.path_id is None:
            raise _method_not_allowed(self, "PATCH", request)
        return await self.access.patch(self.key(request.path_id), request.json())

    async def delete(self, request: Request) -> Response:
        if request.path_id is None:
            raise _method_not_allowed(self, "DELETE", request)
        await self.access.delete(self.key(request.path_id))
        return Response(204)

    def allowed_methods(self, path_id: str | None) -> list[str]:
        if not self.access.table.rest:
            return []
        implemented = super().allowed_methods(path_id)
        if path_id is None:
            return [m for m in implemented if m in ("GET", "POST")]
        return [m for m in implemented if m != "POST"]

    async def on_message(self, conn: Connection, message: dict[str, Any]) -> None:
        """Store the message like a PUT: every subscriber sees the Update."""
        pk = self.access.table.primary_key
        if conn.path_id is not None:
            key = self.key(conn.path_id)
        elif message.get(pk) is not None:
            key = message[pk]
        else:
            key = None
        if key is None:
            await self.access.create(message)
        else:
            await self.access.put(key, message)


def _method_not_allowed(resource: TableResource, method: str, request: Request) -> Exception:
    allowed = resource.allowed_methods(request.path_id)
    where = "a record" if request.path_id is not None else "the table"
    return MethodNotAllowed(f"{method} is not allowed on {where}", allowed)


def load_resources(app: AppConfig) -> list[type[Resource]]:
    """
    Import the modules an app lists under C{resources:} and return the
    L{Resource} subclasses they define (in module, then definition order).
    """
    found: list[type[Resource]] = []
    for relative in app.resources:
        path = os.path.join(app.directory, relative)
        module_name = f"yeti_app_{app.app_id.replace('-', '_')}_{Path(path).stem}"
        spec = importlib.util.spec_from_file_location(module_name, path)
        if spec is None or spec.loader is None:
            raise ConfigError(f"{path}: not a Python module")
        module = importlib.util.module_from_spec(spec)
        sys.modules[module_name] = module
        try:
            spec.loader.exec_module(module)
        except Exception as e:
            raise ConfigError(f"{path}: cannot load resource module: {e!r}") from None
        for _, obj in inspect.getmembers(module, inspect.isclass):
            if (
                issubclass(obj, Resource)
                and obj.__module__ == module_name
                and obj not in (Resource, TableResource)
            ):
                found.append(obj)
    return found
