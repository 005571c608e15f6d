"""
The daemon's service tree.

A L{MultiService} of, in start order: storage, the applications' PubSub
services, the HTTPS (or HTTP) server and the operations API.  It stops in
reverse: listening ports first (closing WebSocket clients with 1001 and
ending SSE streams), storage last.
"""

from __future__ import annotations

import errno
import os
import signal
import socket
from typing import Any

from twisted.application import internet, service
from twisted.internet.defer import Deferred, DeferredList

from yeti.config import ServerConfig
from yeti.errors import ConfigError
from yeti.limits import Connections, InFlight
from yeti.ops import make_ops_site
from yeti.pubsub import PubSub
from yeti.site import App, build_app, health_report, make_site, topic_check
from yeti.sse import SSEStreams
from yeti.storage import SQLiteStorage
from yeti.tls import context_factory, ensure_certificate
from yeti.transports import tls_server_factory
from yeti.websocket import YetiWebSocketFactory


class HTTPService(service.MultiService):
    """The public port; on stop, says goodbye to WebSocket and SSE clients first."""

    name = "http"

    def __init__(self, port: internet.TCPServer, ws: YetiWebSocketFactory, sse: SSEStreams,
                 clock: Any) -> None:
        super().__init__()
        self._port = port
        self._ws = ws
        self._sse = sse
        self._clock = clock
        port.setServiceParent(self)

    def listening_port(self) -> int:
        """The port actually bound (useful when configured as 0)."""
        return self._port._port.getHost().port

    def stopService(self) -> Deferred[Any]:
        self._ws.close_all()
        self._sse.close_all()
        stopped = super().stopService()
        return _when_closed(stopped, self._ws, self._clock)


def _when_closed(stopped: Deferred[Any], ws: YetiWebSocketFactory, clock: Any) -> Deferred[Any]:
    """Wait (2 s at most) for the WebSocket close handshakes to finish."""
    done: Deferred[None] = Deferred()
    deadline = clock.seconds() + 2.0

    def poll() -> None:
        if not ws.protocols or clock.seconds() >= deadline:
            done.callback(None)
            return
        clock.callLater(0.05, poll)

    poll()
    return DeferredList([stopped, done])


def check_port(host: str, port: int, what: str, path: str) -> None:
    """Fail with one clear line if C{host:port} cannot be bound."""
    if port == 0:
        return
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError as e:
            reason = "port in use" if e.errno == errno.EADDRINUSE else e.strerror
            raise ConfigError(
                f"{path}: {what}: cannot listen on [{host}]:{port}: {reason}"
            ) from None


def make_service_from_config(config: ServerConfig, reactor: Any) -> service.MultiService:
    """Build the whole daemon from a loaded configuration."""
    root = service.MultiService()
    tables = [t for app in config.applications for t in app.tables]
    data_dir = os.path.join(config.root_directory, "data")
    storage = SQLiteStorage(data_dir, tables, reactor, max_batch=config.storage.max_batch)
    storage.setServiceParent(root)

    pubsubs = service.MultiService()
    pubsubs.setServiceParent(root)
    apps: list[App] = []
    for app_config in config.applications:
        pubsub = PubSub(reactor, config.ws.queue_size)
        pubsub.setName(f"pubsub:{app_config.app_id}")
        pubsub.setServiceParent(pubsubs)
        apps.append(build_app(app_config, storage, pubsub, reactor))

    # http.maxConnections bounds WebSockets and SSE streams together
    connections = Connections(config.http.max_connections)
    ws_factory = YetiWebSocketFactory(config.ws, connections, reactor, topic_check)
    sse = SSEStreams(config.sse, reactor, connections)
    site = make_site(config, apps, ws_factory, sse, InFlight(config.http.max_in_flight_requests))

    http = config.http
    check_port(http.host, http.port, "http.port", config.path)
    if config.tls.enabled:
        if config.tls.private_key and config.tls.certificate:
            key, cert = config.tls.private_key, config.tls.certificate
        else:
            key, cert = ensure_certificate(
                os.path.join(config.root_directory, "certs", "localhost")
            )
        tls = tls_server_factory(context_factory(key, cert), site)
        port = internet.TCPServer(http.port, tls, interface=http.host)
    else:
        port = internet.TCPServer(http.port, site, interface=http.host)
    HTTPService(port, ws_factory, sse, reactor).setServiceParent(root)

    ops = config.operations_api
    if ops.enabled:
        check_port(ops.host, ops.port, "operationsApi.port", config.path)
        ops_site = make_ops_site(lambda: health_report(apps, ws_factory, sse))
        ops_service = internet.TCPServer(ops.port, ops_site, interface=ops.host)
        ops_service.setName("ops")
        ops_service.setServiceParent(root)
    return root


class CleanExitOnSIGTERM(service.Service):
    """
    Under twistd, stop the reactor on SIGTERM ourselves, so that a clean
    shutdown exits with status 0 (twistd would re-raise the signal and the
    process would end "killed by SIGTERM").  The previous handler is put
    back when the service stops.
    """

    def __init__(self, reactor: Any) -> None:
        self._reactor = reactor
        self._previous: Any = None

    def startService(self) -> None:
        super().startService()
        # after the reactor has installed its own handlers
        self._reactor.callWhenRunning(self._install)

    def _install(self) -> None:
        if self.running:
            self._previous = signal.signal(signal.SIGTERM, self._terminate)

    def stopService(self) -> None:
        super().stopService()
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)
            self._previous = None

    def _terminate(self, signum: int, frame: Any) -> None:
        self._reactor.callFromThread(self._reactor.stop)
