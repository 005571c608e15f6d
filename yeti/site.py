"""
The resource tree: every application's tables and custom resources, with
the WebSocket upgrade and SSE streams on the same URLs.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import Any

import orjson
from twisted.internet.interfaces import IReactorTime
from twisted.web import server

from yeti.config import AppConfig, ServerConfig
from yeti.errors import BadRequest, ConfigError, PayloadTooLarge
from yeti.limits import InFlight
from yeti.pubsub import PubSub
from yeti.resources import AppContext, Resource, TableResource, load_resources
from yeti.rest import AppResource, Cors, Endpoint, RootResource
from yeti.sse import SSEStreams
from yeti.storage import IStorage
from yeti.tables import TableAccess
from yeti.websocket import YetiWebSocketFactory


@dataclass
class App:
    """An application at run time: its context and its resources by URL name."""

    config: AppConfig
    context: AppContext
    resources: dict[str, Resource]


def build_app(app: AppConfig, storage: IStorage, pubsub: PubSub, clock: IReactorTime) -> App:
    """Make the table accessors and resources of one application."""
    tables = {t.name: TableAccess(t, storage, pubsub, clock) for t in app.tables}
    context = AppContext(app.app_id, tables, pubsub, app.custom)
    classes = load_resources(app)
    overrides: dict[str, type[TableResource]] = {}
    resources: dict[str, Resource] = {}
    for cls in classes:
        if issubclass(cls, TableResource):
            if cls.table_name() not in tables:
                raise ConfigError(
                    f"{app.directory}: resource {cls.__name__} extends unknown table "
                    f"'{cls.table_name()}'"
                )
            overrides[cls.table_name()] = cls
    for table in app.tables:
        if table.exported:
            cls = overrides.get(table.name, TableResource)
            resources[table.path] = cls(context, tables[table.name])
    for cls in classes:
        if not issubclass(cls, TableResource):
            # custom resources take precedence over tables of the same name
            resources[cls.url_name()] = cls(context)
    return App(app, context, resources)


def topic_check(target: Resource, topic: str) -> None:
    """
    A WebSocket client may use custom topics and the topics of tables that
    have WebSocket enabled in its own application; nothing else.
    """
    table_name = topic.split("/", 1)[0]
    access = target.app.tables.get(table_name)
    if access is not None and not (access.table.exported and access.table.ws):
        raise BadRequest(f"topic '{topic}' is not available over WebSocket")


def make_site(
    config: ServerConfig,
    apps: list[App],
    ws_factory: YetiWebSocketFactory,
    sse: SSEStreams,
    in_flight: InFlight,
) -> server.Site:
    """Build the site: C{/{app_id}/{name}[/{id}]} for every app."""
    cors = Cors(config.http)
    roots: dict[str, AppResource] = {}
    for app in apps:
        endpoints = {
            name: Endpoint(target, cors, in_flight, ws_factory.upgrade, sse)
            for name, target in app.resources.items()
        }
        # /{app_id}/{table or resource}[/{id}]: REST, WebSocket upgrade, SSE
        roots[app.config.app_id] = AppResource(endpoints, cors)
    site = server.Site(RootResource(roots, cors))
    site.requestFactory = partial(BoundedRequest, max_body_size=config.http.max_body_size)
    site.displayTracebacks = False
    if config.logging.level in ("error", "warn"):
        site.log = lambda request: None  # the access log is info level
    return site


class BoundedRequest(server.Request):
    """
    A request that refuses a body over C{max_body_size} with 413 as soon as
    its length is known (or, for a chunked body, passes the limit), without
    buffering it, and closes the connection.

    Bodies are read by the resources (JSON, or raw for custom resources), so
    Twisted's parsing of form POSTs into C{request.args} is off: it parsed
    every POST's Content-Type with the C{email} package, 13% of the reactor
    thread in the REST benchmark.
    """

    def __init__(self, *args: Any, max_body_size: int, **kwargs: Any) -> None:
        super().__init__(*args, parsePOSTFormSubmission=False, **kwargs)
        self._max_body_size = max_body_size
        self._received = 0
        self._refused = False

    def gotLength(self, length: int | None) -> None:
        super().gotLength(length if length is None or length <= self._max_body_size else 0)
        if length is not None and length > self._max_body_size:
            self._refuse()

    def handleContentChunk(self, data: bytes) -> None:
        if self._refused:
            return
        self._received += len(data)
        if self._received > self._max_body_size:
            self._refuse()
            return
        super().handleContentChunk(data)

    def process(self) -> None:
        if not self._refused:
            super().process()

    def _refuse(self) -> None:
        self._refused = True
        error = PayloadTooLarge(f"request body is larger than {self._max_body_size} bytes")
        body = orjson.dumps({"error": error.message})
        transport = self.channel.transport
        transport.write(
            b"HTTP/1.1 %d Payload Too Large\r\ncontent-type: application/json\r\n"
            b"content-length: %d\r\nconnection: close\r\n\r\n%s" % (error.status, len(body), body)
        )
        transport.loseConnection()


def health_report(
    apps: list[App], ws_factory: YetiWebSocketFactory, sse: SSEStreams
) -> dict[str, Any]:
    """What C{/health} shows besides C{status}."""
    return {
        "applications": [
            {
                "app_id": app.config.app_id,
                "tables": [t.name for t in app.config.tables],
                "resources": sorted(app.resources),
                "topics": app.context.pubsub.topic_count(),
                "subscribers": app.context.pubsub.subscriber_count(),
                "lagged": app.context.pubsub.lagged_count,
            }
            for app in apps
        ],
        "connections": {"websocket": len(ws_factory.protocols), "sse": len(sse.streams)},
        "topics": sum(a.context.pubsub.topic_count() for a in apps),
        "subscribers": sum(a.context.pubsub.subscriber_count() for a in apps),
    }
