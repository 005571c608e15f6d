"""
Start the real daemon in the test process: real TLS on a free loopback
port, real SQLite files under the test's temporary directory.
"""

from __future__ import annotations

import json
import os
from typing import Any

import yaml
from twisted.internet import reactor, ssl
from twisted.internet.defer import Deferred, ensureDeferred, succeed
from twisted.internet.protocol import Protocol
from twisted.python.failure import Failure
from twisted.trial import unittest
from twisted.web.client import Agent, readBody
from twisted.web.http_headers import Headers
from twisted.web.iweb import IPolicyForHTTPS
from zope.interface import implementer

from yeti.config import load_config
from yeti.service import make_service_from_config

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
ETC = os.path.join(REPO, "etc")

MESSAGE_SCHEMA = """
type Message @table(database: "realtime-demo") @export(rest: true, ws: true, sse: true) {
    id: ID! @primaryKey
    title: String!
    content: String!
}
"""


def write_app(root: str, app_id: str, schema: str, extra: dict[str, Any] | None = None,
              files: dict[str, str] | None = None) -> str:
    """Write an application directory; return its path."""
    directory = os.path.join(root, app_id)
    os.makedirs(directory, exist_ok=True)
    with open(os.path.join(directory, "schema.graphql"), "w") as f:
        f.write(schema)
    app = {"name": app_id, "app_id": app_id, "rest": True, "ws": True, "sse": True,
           "schemas": ["schema.graphql"], **(extra or {})}
    with open(os.path.join(directory, "config.yaml"), "w") as f:
        yaml.safe_dump(app, f)
    for name, text in (files or {}).items():
        path = os.path.join(directory, name)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w") as f:
            f.write(text)
    return directory


def write_config(root: str, apps: list[str], tls: bool = True, **sections: Any) -> str:
    """Write a server config listening on free loopback ports; return its path."""
    config: dict[str, Any] = {
        "rootDirectory": root,
        "http": {"host": "127.0.0.1", "port": 0},
        "tls": {"enabled": tls, "autoGenerate": True},
        "operationsApi": {"host": "127.0.0.1", "port": 0},
        "applications": apps,
    }
    for key, value in sections.items():
        config.setdefault(key, {}).update(value)
    path = os.path.join(root, "config.yaml")
    with open(path, "w") as f:
        yaml.safe_dump(config, f)
    return path


class RawClient(Protocol):
    """A raw TCP peer: keeps every byte the server sends; C{lost} fires on close."""

    def __init__(self) -> None:
        self.data = b""
        self.lost: Deferred[None] = Deferred()

    def dataReceived(self, data: bytes) -> None:
        self.data += data

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        self.lost.callback(None)


@implementer(IPolicyForHTTPS)
class TrustCert:
    """Client TLS policy trusting exactly the daemon's self-signed certificate."""

    def __init__(self, cert_path: str) -> None:
        with open(cert_path, "rb") as f:
            self._root = ssl.Certificate.loadPEM(f.read())

    def creatorForNetloc(self, hostname: bytes, port: int) -> Any:
        return ssl.optionsForClientTLS(hostname.decode("ascii"), trustRoot=self._root)


class Daemon:
    """A running daemon built from a config file, on the test reactor."""

    def __init__(self, config_path: str) -> None:
        self.config = load_config(config_path)
        self.service = make_service_from_config(self.config, reactor)

    def start(self) -> None:
        self.service.startService()

    def stop(self) -> Deferred[Any]:
        """Stop the daemon; stopping it again (e.g. in cleanup) does nothing."""
        if not self.service.running:
            return succeed(None)
        return self.service.stopService()

    @property
    def port(self) -> int:
        return self.service.getServiceNamed("http").listening_port()

    @property
    def ops_port(self) -> int:
        return self.service.getServiceNamed("ops")._port.getHost().port

    @property
    def tls(self) -> bool:
        return self.config.tls.enabled

    @property
    def cert_path(self) -> str:
        return os.path.join(self.config.root_directory, "certs", "localhost", "cert.pem")

    def url(self, path: str, scheme: str = "https") -> str:
        if not self.tls:
            scheme = {"https": "http", "wss": "ws"}[scheme]
        return f"{scheme}://localhost:{self.port}{path}"

    def client_tls(self, hostname: str = "localhost") -> Any:
        return TrustCert(self.cert_path).creatorForNetloc(hostname.encode(), self.port)

    def agent(self) -> Agent:
        if self.tls:
            return Agent(reactor, contextFactory=TrustCert(self.cert_path))
        return Agent(reactor)

    async def request(self, method: str, path: str, body: Any = None,
                      headers: dict[str, str] | None = None,
                      raw: bytes | None = None) -> tuple[int, Any, Any]:
        """
        Make a request; return (status, parsed JSON body or raw bytes, headers).
        """
        from io import BytesIO

        from twisted.web.client import FileBodyProducer

        hdrs = Headers({k.encode(): [v.encode()] for k, v in (headers or {}).items()})
        producer = None
        if raw is None and body is not None:
            raw = json.dumps(body).encode()
            if not hdrs.hasHeader(b"content-type"):
                hdrs.setRawHeaders(b"content-type", [b"application/json"])
        if raw is not None:
            producer = FileBodyProducer(BytesIO(raw))
        response = await self.agent().request(
            method.encode(), self.url(path).encode(), hdrs, producer
        )
        data = await readBody(response)
        try:
            parsed: Any = json.loads(data) if data else None
        except ValueError:
            parsed = data
        return response.code, parsed, response.headers


class DaemonTestCase(unittest.TestCase):
    """Starts a daemon per test with the apps from L{apps}."""

    tls = True
    sections: dict[str, Any] = {}

    def apps(self, root: str) -> list[str]:
        return [write_app(root, "my-app", MESSAGE_SCHEMA)]

    def setUp(self) -> None:
        root = os.path.abspath(self.mktemp())
        os.makedirs(root)
        self.root = root
        self.daemon = Daemon(write_config(root, self.apps(root), tls=self.tls, **self.sections))
        self.daemon.start()
        self.addCleanup(self.daemon.stop)

    def request(self, *args: Any, **kwargs: Any) -> Deferred[tuple[int, Any, Any]]:
        return ensureDeferred(self.daemon.request(*args, **kwargs))
