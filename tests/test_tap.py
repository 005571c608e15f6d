"""
The twistd plugin: C{Options}, C{makeService}, start-up errors.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any

import yaml
from twisted.application import service
from twisted.internet import reactor
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.utils import getProcessOutputAndValue
from twisted.python import usage
from twisted.trial import unittest
from twisted.web.client import Agent, readBody

from tests.harness import MESSAGE_SCHEMA, REPO, Daemon, write_app, write_config
from yeti.storage import SQLiteStorage
from yeti.tap import Options, makeService

TWISTD = os.path.join(os.path.dirname(sys.executable), "twistd")


def twistd_env() -> dict[str, str]:
    """The environment for a C{twistd} subprocess that finds this checkout's plugin."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([REPO] + [p for p in [env.get("PYTHONPATH")] if p])
    return env


class OptionsTests(unittest.TestCase):
    """Command-line options of C{twistd yeti}."""

    def test_default(self) -> None:
        """Without options the config is C{etc/config.yaml}."""
        options = Options()
        options.parseOptions([])
        self.assertEqual(options["config"], "etc/config.yaml")

    def test_config(self) -> None:
        """C{--config} and C{-c} name the config file."""
        options = Options()
        options.parseOptions(["--config", "/some/where.yaml"])
        self.assertEqual(options["config"], "/some/where.yaml")
        options = Options()
        options.parseOptions(["-c", "x.yaml"])
        self.assertEqual(options["config"], "x.yaml")

    def test_unknown_option(self) -> None:
        """An unknown option is a usage error."""
        self.assertRaises(usage.UsageError, Options().parseOptions, ["--nope"])


class MakeServiceTests(unittest.TestCase):
    """C{makeService} builds a service that serves, and stops cleanly."""

    def setUp(self) -> None:
        self.root = os.path.abspath(self.mktemp())
        os.makedirs(self.root)

    def make(self, **sections: Any) -> service.MultiService:
        path = write_config(self.root, [write_app(self.root, "my-app", MESSAGE_SCHEMA)],
                            **sections)
        options = Options()
        options.parseOptions(["--config", path])
        return makeService(options)

    async def test_serves(self) -> None:
        """
        The service starts storage, HTTPS and the operations API in that
        order; C{/health} answers C{status: ok} with the apps and tables.
        """
        svc = self.make()
        names = [s.name for s in svc]
        self.assertLess(names.index("http"), names.index("ops"))
        self.assertIsInstance(list(svc)[0], SQLiteStorage)
        svc.startService()
        self.addCleanup(svc.stopService)
        ops = svc.getServiceNamed("ops")._port.getHost()
        self.assertEqual(ops.host, "127.0.0.1")
        response = await Agent(reactor).request(
            b"GET", f"http://127.0.0.1:{ops.port}/health".encode())
        body = json.loads(await readBody(response))
        self.assertEqual(response.code, 200)
        self.assertEqual(body["status"], "ok")
        [app] = body["applications"]
        self.assertEqual((app["app_id"], app["tables"]), ("my-app", ["Message"]))

    async def test_serves_rest(self) -> None:
        """The started service answers REST over HTTPS."""
        path = write_config(self.root, [write_app(self.root, "my-app", MESSAGE_SCHEMA)])
        daemon = Daemon(path)
        daemon.start()
        self.addCleanup(daemon.stop)
        status, body, _ = await daemon.request(
            "POST", "/my-app/Message", {"id": "1", "title": "t", "content": "c"})
        self.assertEqual((status, body["id"]), (201, "1"))
        status, body, _ = await daemon.request("GET", "/my-app/Message")
        self.assertEqual((status, [r["id"] for r in body]), (200, ["1"]))

    def test_ops_host_default(self) -> None:
        """Without C{operationsApi.host} the operations API binds 127.0.0.1."""
        path = write_config(self.root, [write_app(self.root, "my-app", MESSAGE_SCHEMA)])
        with open(path) as f:
            config = yaml.safe_load(f)
        config["operationsApi"] = {"port": 0}
        with open(path, "w") as f:
            yaml.safe_dump(config, f)
        options = Options()
        options.parseOptions(["--config", path])
        svc = makeService(options)
        svc.startService()
        self.addCleanup(svc.stopService)
        self.assertEqual(svc.getServiceNamed("ops")._port.getHost().host, "127.0.0.1")

    def test_stop_closes_ports(self) -> None:
        """After stopService the HTTPS and operations ports are closed."""
        svc = self.make()
        svc.startService()
        http = svc.getServiceNamed("http").listening_port()
        ops = svc.getServiceNamed("ops")._port.getHost().port

        def check(_: Any) -> None:
            for port in (http, ops):
                listener = reactor.listenTCP(port, Factory.forProtocol(Protocol),
                                             interface="127.0.0.1")
                listener.stopListening()

        return svc.stopService().addCallback(check)


class BadConfigTests(unittest.TestCase):
    """
    A bad config stops C{makeService} with one line naming the file and key
    (a L{usage.UsageError}, or a L{SystemExit} with that line).
    """

    def setUp(self) -> None:
        self.root = os.path.abspath(self.mktemp())
        os.makedirs(self.root)
        self.app = write_app(self.root, "my-app", MESSAGE_SCHEMA)

    def config(self, **changes: Any) -> str:
        path = write_config(self.root, [self.app])
        with open(path) as f:
            config = yaml.safe_load(f)
        for dotted, value in changes.items():
            section, _, key = dotted.partition("__")
            if key:
                config.setdefault(section, {})[key] = value
            else:
                config[section] = value
        with open(path, "w") as f:
            yaml.safe_dump(config, f)
        return path

    def assertUsageError(self, path: str, *expected: str) -> str:
        options = Options()
        options.parseOptions(["--config", path])
        # A UsageError, or (for twistd, which prints a traceback for a
        # UsageError raised here) a SystemExit carrying the line.
        error = self.assertRaises((usage.UsageError, SystemExit), makeService, options)
        message = str(error.code if isinstance(error, SystemExit) else error)
        self.assertNotIn("\n", message)
        self.assertNotIn("Traceback", message)
        for text in expected:
            self.assertIn(text, message)
        return message

    def test_missing_file(self) -> None:
        """A missing config file is named."""
        path = os.path.join(self.root, "nope.yaml")
        self.assertUsageError(path, path, "not found")

    def test_yaml_error(self) -> None:
        """A YAML syntax error names the file and line."""
        path = os.path.join(self.root, "broken.yaml")
        with open(path, "w") as f:
            f.write("http:\n  port: [9996\n")
        self.assertUsageError(path, path)

    def test_unknown_key(self) -> None:
        """An unknown key is named."""
        self.assertUsageError(self.config(htp={"port": 1}), "htp")
        self.assertUsageError(self.config(http__prot=1), "http.prot")

    def test_wrong_type(self) -> None:
        """A value of the wrong type names its key."""
        self.assertUsageError(self.config(http__port="abc"), "http.port")
        self.assertUsageError(self.config(tls__enabled="yes"), "tls.enabled")

    def test_missing_app(self) -> None:
        """An application directory that does not exist is named."""
        self.assertUsageError(self.config(applications=["nowhere"]), "nowhere")

    def test_missing_schema(self) -> None:
        """A schema file named by an app that does not exist is named."""
        os.remove(os.path.join(self.app, "schema.graphql"))
        self.assertUsageError(self.config(), "schema.graphql")

    def test_schema_error(self) -> None:
        """A schema error names the schema file and line."""
        with open(os.path.join(self.app, "schema.graphql"), "w") as f:
            f.write("type A @table {\n  id: ID! @primaryKey\n  x: Nope\n}\n")
        self.assertUsageError(self.config(), "schema.graphql:3", "Nope")

    def test_port_in_use(self) -> None:
        """A port someone else listens on is a clear start-up error."""
        listener = reactor.listenTCP(0, Factory.forProtocol(Protocol), interface="127.0.0.1")
        self.addCleanup(listener.stopListening)
        port = listener.getHost().port
        self.assertUsageError(self.config(http__port=port), "http.port", str(port), "in use")
        self.assertUsageError(self.config(operationsApi__port=port),
                              "operationsApi.port", "in use")


class TwistdTests(unittest.TestCase):
    """C{twistd -n yeti} as a user runs it."""

    def setUp(self) -> None:
        self.root = os.path.abspath(self.mktemp())
        os.makedirs(self.root)

    def test_plugin_listed(self) -> None:
        """C{twistd --help} lists the C{yeti} plugin."""
        d = getProcessOutputAndValue(TWISTD, ["--help"], env=twistd_env(), path=self.root)

        def check(result: tuple[bytes, bytes, int]) -> None:
            out, err, code = result
            self.assertEqual(code, 0, err)
            self.assertIn(b"yeti", out)

        return d.addCallback(check)

    def test_bad_config(self) -> None:
        """
        C{twistd -n yeti --config <bad>} exits non-zero with one line naming
        the file and key, and no traceback.
        """
        path = os.path.join(self.root, "bad.yaml")
        with open(path, "w") as f:
            f.write("http:\n  port: abc\n")
        d = getProcessOutputAndValue(
            TWISTD, ["-n", "--pidfile=", "yeti", "--config", path],
            env=twistd_env(), path=self.root,
        )

        def check(result: tuple[bytes, bytes, int]) -> None:
            out, err, code = result
            self.assertNotEqual(code, 0)
            text = (out + err).decode("utf-8", "replace")
            self.assertNotIn("Traceback", text)
            lines = [line for line in text.splitlines() if line.strip()]
            self.assertEqual(len(lines), 1, text)
            self.assertIn(path, lines[0])
            self.assertIn("http.port", lines[0])

        return d.addCallback(check)
