"""
The HTTP side of the resource tree: routing, CORS, body checks, JSON
responses and errors.

C{/{app_id}/{name}} and C{/{app_id}/{name}/{id}} reach an L{Endpoint}, which
turns the Twisted request into a L{yeti.resources.Request}, runs the
resource's handler and writes its answer.  The same URLs upgrade to a
WebSocket or stream Server-Sent Events; those requests are handed to the
WebSocket and SSE modules.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, Protocol

import orjson
from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web import resource, server
from twisted.web.iweb import IRequest

from yeti.config import HTTPConfig
from yeti.errors import (
    BadRequest,
    MethodNotAllowed,
    NotFound,
    UnsupportedMediaType,
    YetiError,
)
from yeti.limits import InFlight
from yeti.resources import Request, Resource, Response

_log = Logger()

BODY_METHODS = frozenset({b"POST", b"PUT", b"PATCH"})


class StreamHandler(Protocol):
    """Something that takes over a request: the WebSocket upgrade or an SSE stream."""

    def __call__(self, request: IRequest, target: Resource, path_id: str | None) -> Any: ...


def json_bytes(value: Any) -> bytes:
    return orjson.dumps(value)


def write_error(request: IRequest, error: YetiError) -> bytes:
    """Set the status and headers of C{error} and return its JSON body."""
    request.setResponseCode(error.status)
    request.setHeader(b"content-type", b"application/json")
    if isinstance(error, MethodNotAllowed):
        request.setHeader(b"allow", ", ".join(error.allowed + ["OPTIONS"]).encode())
    return json_bytes({"error": error.message})


class ErrorResource(resource.Resource):
    """Answers every request with one JSON error."""

    isLeaf = True

    def __init__(self, error: YetiError, cors: Cors | None = None) -> None:
        super().__init__()
        self._error = error
        self._cors = cors

    def render(self, request: IRequest) -> bytes:
        if self._cors is not None:
            self._cors.apply(request)
        return write_error(request, self._error)


class Cors:
    """CORS headers per C{http.cors} and C{http.corsAccessList}."""

    def __init__(self, config: HTTPConfig) -> None:
        self._enabled = config.cors
        self._any = "*" in config.cors_access_list
        self._origins = {o.encode() for o in config.cors_access_list}

    def apply(self, request: IRequest) -> None:
        if not self._enabled:
            return
        origin = request.getHeader(b"origin")
        if self._any:
            request.setHeader(b"access-control-allow-origin", b"*")
        elif origin is not None and origin in self._origins:
            request.setHeader(b"access-control-allow-origin", origin)
            request.setHeader(b"vary", b"Origin")

    def preflight(self, request: IRequest, allowed: list[str]) -> bytes:
        request.setResponseCode(204)
        if self._enabled:
            request.setHeader(b"access-control-allow-methods", ", ".join(allowed).encode())
            asked = request.getHeader(b"access-control-request-headers")
            request.setHeader(b"access-control-allow-headers", asked or b"content-type")
            request.setHeader(b"access-control-max-age", b"86400")
        request.setHeader(b"allow", ", ".join(allowed + ["OPTIONS"]).encode())
        return b""


def wants_sse(request: IRequest, raw_query: str) -> bool:
    """True for C{?stream=sse} or C{Accept: text/event-stream}."""
    if "stream=sse" in raw_query.split("&"):
        return True
    accept = request.getHeader(b"accept") or b""
    return b"text/event-stream" in accept


def is_upgrade(request: IRequest) -> bool:
    upgrade = request.getHeader(b"upgrade") or b""
    return upgrade.lower() == b"websocket"


class Endpoint(resource.Resource):
    """The URL of one resource (a table or a custom resource) and its records."""

    isLeaf = True

    def __init__(
        self,
        target: Resource,
        cors: Cors,
        in_flight: InFlight,
        upgrade: StreamHandler,
        stream: StreamHandler,
    ) -> None:
        super().__init__()
        self._target = target
        self._cors = cors
        self._in_flight = in_flight
        self._upgrade = upgrade
        self._stream = stream

    def render(self, request: IRequest) -> bytes | int:
        self._cors.apply(request)
        try:
            return self._render(request)
        except YetiError as e:
            return write_error(request, e)

    def _render(self, request: IRequest) -> bytes | int:
        path_id = _path_id(request)
        raw_query = _raw_query(request)
        method = request.method
        if method == b"OPTIONS":
            return self._cors.preflight(request, self._target.allowed_methods(path_id))
        if is_upgrade(request):
            if not self._target.ws_enabled:
                raise BadRequest(f"WebSocket is not enabled for {_describe(request)}")
            return self._upgrade(request, self._target, path_id)
        if method in (b"GET", b"HEAD") and wants_sse(request, raw_query):
            if not self._target.sse_enabled:
                raise BadRequest(f"Server-Sent Events are not enabled for {_describe(request)}")
            return self._stream(request, self._target, path_id)
        name = method.decode("ascii", "replace").lower()
        if name == "head":
            name = "get"
        handler = getattr(self._target, name, None) if name in _VERBS else None
        allowed = self._target.allowed_methods(path_id)
        if handler is None or name.upper() not in allowed:
            if not allowed:
                raise MethodNotAllowed(f"REST is not enabled for {_describe(request)}", allowed)
            raise MethodNotAllowed(f"{name.upper()} is not allowed here", allowed)
        body = b""
        if method in BODY_METHODS:
            body = self._read_body(request)
        headers = {
            k.decode("latin-1").lower(): b",".join(v).decode("latin-1")
            for k, v in request.requestHeaders.getAllRawHeaders()
        }
        yeti_request = Request(name.upper(), path_id, raw_query, headers, body)
        self._in_flight.enter()
        d = Deferred.fromCoroutine(_call(handler, yeti_request))
        d.addBoth(self._finish, request)
        return server.NOT_DONE_YET

    def _read_body(self, request: IRequest) -> bytes:
        """
        The JSON body.  Its size needs no check here: L{yeti.site.BoundedRequest}
        has already answered 413 to any body over C{http.maxBodySize}.
        """
        content_type = (request.getHeader(b"content-type") or b"").split(b";")[0].strip().lower()
        if content_type and not (
            content_type == b"application/json" or content_type.endswith(b"+json")
        ):
            raise UnsupportedMediaType(
                f"content type {content_type.decode('latin-1')!r} is not supported;"
                " send application/json"
            )
        return request.content.read()

    def _finish(self, result: Any, request: server.Request) -> None:
        self._in_flight.leave()
        if request._disconnected or request.finished:
            if isinstance(result, Failure) and not result.check(YetiError):
                _log.failure("handler failed after the client left", result)
            return
        if isinstance(result, Failure):
            if result.check(YetiError):
                body = write_error(request, result.value)
            else:
                _log.failure("unhandled error in {method} {uri}", result,
                             method=request.method, uri=request.uri)
                body = write_error(request, YetiError("internal server error"))
            request.write(body)
            request.finish()
            return
        response = result if isinstance(result, Response) else Response(200, result)
        request.setResponseCode(response.status)
        for key, value in response.headers.items():
            request.setHeader(key.encode("latin-1"), value.encode("latin-1"))
        if response.status == 204 or response.body is None:
            request.finish()
            return
        request.setHeader(b"content-type", response.content_type.encode("latin-1"))
        payload = response.body if isinstance(response.body, bytes) else json_bytes(response.body)
        if response.status == 201 and "location" not in {k.lower() for k in response.headers}:
            location = _location(request, response.body)
            if location is not None:
                request.setHeader(b"location", location)
        request.write(payload)
        request.finish()


_VERBS = frozenset({"get", "post", "put", "patch", "delete"})


async def _call(handler: Callable[[Request], Awaitable[Any]], request: Request) -> Any:
    return await handler(request)


def _describe(request: IRequest) -> str:
    return request.path.decode("utf-8", "replace")


def _path_id(request: IRequest) -> str | None:
    postpath = [p for p in request.postpath]
    if postpath and postpath[-1] == b"" and len(postpath) <= 2:
        postpath = postpath[:-1]
    if not postpath:
        return None
    if len(postpath) > 1:
        raise NotFound(f"no such path: {_describe(request)}")
    try:
        path_id = postpath[0].decode("utf-8")
    except UnicodeDecodeError:
        raise BadRequest("the id in the URL is not valid UTF-8") from None
    if not path_id or "\x00" in path_id:
        raise BadRequest("the id in the URL is empty or holds a NUL character")
    return path_id


def _raw_query(request: IRequest) -> str:
    _, _, query = request.uri.partition(b"?")
    try:
        return query.decode("utf-8")
    except UnicodeDecodeError:
        raise BadRequest("the query string is not valid UTF-8") from None


def _location(request: IRequest, body: Any) -> bytes | None:
    """
    Where a created record lives: the URL itself when the request named a
    record (a PUT that created it), else the table URL and the new id.
    """
    from urllib.parse import quote

    if _path_id(request) is not None:
        return request.path
    if not isinstance(body, dict) or "id" not in body:
        return None
    base = request.path.rstrip(b"/")
    return base + b"/" + quote(str(body["id"]), safe="").encode("ascii")


class AppResource(resource.Resource):
    """C{/{app_id}}: routes to the app's endpoints by name."""

    def __init__(self, endpoints: dict[str, Endpoint], cors: Cors) -> None:
        super().__init__()
        self._endpoints = {name.encode("utf-8"): e for name, e in endpoints.items()}
        self._cors = cors

    def getChild(self, path: bytes, request: IRequest) -> resource.Resource:
        endpoint = self._endpoints.get(path)
        if endpoint is None:
            name = path.decode("utf-8", "replace")
            return ErrorResource(NotFound(f"no table or resource named '{name}'"), self._cors)
        return endpoint

    def render(self, request: IRequest) -> bytes:
        self._cors.apply(request)
        return write_error(request, NotFound("name a table: /{app_id}/{table}"))


class RootResource(resource.Resource):
    """C{/}: routes to applications by app id."""

    def __init__(self, apps: dict[str, AppResource], cors: Cors) -> None:
        super().__init__()
        self._apps = {app_id.encode("utf-8"): a for app_id, a in apps.items()}
        self._cors = cors

    def getChild(self, path: bytes, request: IRequest) -> resource.Resource:
        app = self._apps.get(path)
        if app is None:
            name = path.decode("utf-8", "replace")
            return ErrorResource(NotFound(f"no application named '{name}'"), self._cors)
        return app

    def render(self, request: IRequest) -> bytes:
        self._cors.apply(request)
        return write_error(request, NotFound("name an application: /{app_id}/{table}"))
