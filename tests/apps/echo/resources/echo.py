"""
An echo endpoint: every WebSocket message goes back unchanged, text as
text and binary as binary.  The Autobahn conformance suite drives it.
"""

from __future__ import annotations

from yeti.resources import Connection, Resource


class Echo(Resource):
    """C{/echo/Echo}: a WebSocket that sends each message back as it came."""

    ws = True
    raw_messages = True

    async def on_raw_message(self, conn: Connection, payload: bytes, is_binary: bool) -> None:
        conn.send_raw(payload, is_binary)
