"""The operations API: plain HTTP on loopback, C{GET /health}."""

from __future__ import annotations

from collections.abc import Callable

import orjson
from twisted.web import resource, server
from twisted.web.iweb import IRequest


class Health(resource.Resource):
    """C{/health}: status, what is loaded, and live connection counts."""

    isLeaf = True

    def __init__(self, report: Callable[[], dict]) -> None:
        super().__init__()
        self._report = report

    def render_GET(self, request: IRequest) -> bytes:
        request.setHeader(b"content-type", b"application/json")
        return orjson.dumps({"status": "ok", **self._report()})


def make_ops_site(report: Callable[[], dict]) -> server.Site:
    root = resource.Resource()
    # GET /health: liveness and counts
    root.putChild(b"health", Health(report))
    return server.Site(root)
