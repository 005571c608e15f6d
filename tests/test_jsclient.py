"""
The spec's JavaScript WebSocket client (websocket.md), run as written in
Node against the real daemon over verified TLS.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Callable
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.error import ProcessDone, ProcessTerminated
from twisted.internet.protocol import ProcessProtocol
from twisted.python.failure import Failure

from tests.harness import HERE, MESSAGE_SCHEMA, DaemonTestCase, write_app
from tests.test_websocket import Wakeup, with_timeout

SCRIPT = os.path.join(HERE, "js", "spec_client.mjs")
TIMEOUT = 10.0


class NodeScript(ProcessProtocol):
    """Collects the script's output: one JSON array per line."""

    def __init__(self) -> None:
        self.lines: list[list[Any]] = []
        self.stderr = b""
        self._buffer = b""
        self._wakeup = Wakeup()
        self.ended: Deferred[int | None] = Deferred()
        self.exit_code: int | None = None
        self.running = True

    def outReceived(self, data: bytes) -> None:
        self._buffer += data
        while b"\n" in self._buffer:
            line, self._buffer = self._buffer.split(b"\n", 1)
            self.lines.append(json.loads(line))
        self._wakeup.wake()

    def errReceived(self, data: bytes) -> None:
        self.stderr += data

    def processEnded(self, reason: Failure) -> None:
        self.running = False
        if reason.check(ProcessDone, ProcessTerminated):
            self.exit_code = reason.value.exitCode
        self.ended.callback(self.exit_code)
        self._wakeup.wake()

    async def wait_for(self, match: Callable[[list[Any]], bool], what: str) -> list[Any]:
        """The first output line that C{match}es, waiting up to TIMEOUT seconds."""
        deadline = time.monotonic() + TIMEOUT
        while True:
            for line in self.lines:
                if match(line):
                    return line
            errors = [line for line in self.lines if line[:1] == ["WebSocket error:"]]
            if errors:
                raise AssertionError(f"the client reported {errors!r} while waiting for {what}")
            if not self.running:
                raise AssertionError(
                    f"node exited ({self.exit_code}) before printing {what}; "
                    f"stdout={self.lines!r} stderr={self.stderr.decode(errors='replace')}"
                )
            try:
                await self._wakeup.wait(deadline, what)
            except AssertionError:
                raise AssertionError(
                    f"timed out waiting for {what}; stdout={self.lines!r} "
                    f"stderr={self.stderr.decode(errors='replace')}"
                ) from None


def received(message_type: str, id: str) -> Callable[[list[Any]], bool]:
    """Matches the spec client's C{console.log('Received:', data)} of one message."""

    def match(line: list[Any]) -> bool:
        return (
            len(line) == 2 and line[0] == "Received:" and isinstance(line[1], dict)
            and line[1].get("message_type") == message_type and line[1].get("id") == id
        )

    return match


class SpecClientTests(DaemonTestCase):
    def apps(self, root: str) -> list[str]:
        return [write_app(root, "my-app", MESSAGE_SCHEMA)]

    def start_node(self) -> NodeScript:
        node = shutil.which("node")
        if node is None:
            self.fail(
                "Node.js (20 or later) is required to run the spec's JavaScript "
                "client (tests/js/spec_client.mjs) but `node` is not on PATH"
            )
        script = NodeScript()
        env = {
            "PATH": os.environ.get("PATH", ""),
            "NODE_EXTRA_CA_CERTS": self.daemon.cert_path,
            "YETI_WS_URL": self.daemon.url("/my-app/Message", "wss"),
        }
        reactor.spawnProcess(
            script, node, [node, "--experimental-websocket", SCRIPT], env=env
        )

        async def stop() -> None:
            if script.running:
                script.transport.signalProcess("KILL")
            await with_timeout(script.ended, TIMEOUT, "node to exit")

        self.addCleanup(lambda: Deferred.fromCoroutine(stop()))
        return script

    async def test_spec_client(self) -> None:
        """
        The spec's client connects, subscribes, sends a record and receives
        its Update and the Update of a REST POST; the record is stored.
        """
        script = self.start_node()
        await script.wait_for(lambda line: line == ["Connected"], "Connected")
        sent = await script.wait_for(received("Update", "msg-new"), "the Update of msg-new")
        record = {"id": "msg-new", "title": "From WebSocket", "content": "Sent via WS"}
        self.assertEqual(sent[1]["data"], record)
        status, body, _ = await self.request("GET", "/my-app/Message/msg-new")
        self.assertEqual((status, body), (200, record))

        posted = {"id": "msg-1", "title": "Hello", "content": "World"}
        status, _, _ = await self.request("POST", "/my-app/Message", posted)
        self.assertEqual(status, 201)
        update = await script.wait_for(received("Update", "msg-1"), "the Update of msg-1")
        self.assertEqual(update[1]["data"], posted)
        self.assertRegex(update[1]["timestamp"], r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z$")

        script.transport.closeStdin()
        closed = await script.wait_for(lambda line: line[0] == "Disconnected:", "Disconnected")
        self.assertIn(closed[1], (1000, 1005))
        self.assertEqual(await with_timeout(script.ended, TIMEOUT, "node to exit"), 0)
        errors = [line for line in script.lines if line[0] == "WebSocket error:"]
        self.assertEqual(errors, [])
        # one Update per write: subscribing to its own table added no duplicates
        updates = [line for line in script.lines if line[0] == "Received:"]
        self.assertEqual(len(updates), 2, updates)
