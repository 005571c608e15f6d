"""
Tests for L{yeti.config}.
"""

from __future__ import annotations

import os
import textwrap

from twisted.trial.unittest import TestCase

from yeti.config import (
    HTTPConfig,
    LoggingConfig,
    OpsConfig,
    SSEConfig,
    StorageConfig,
    TLSConfig,
    WSConfig,
    load_config,
    parse_config,
)
from yeti.errors import ConfigError

PRODUCT = """
type Product @table @export {
    id: ID! @primaryKey
    name: String
}
"""


class _Files:
    """Write text files under a root directory."""

    def __init__(self, root: str) -> None:
        self.root = root

    def write(self, relative: str, text: str) -> str:
        path = os.path.join(self.root, relative)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w", encoding="utf-8") as f:
            f.write(textwrap.dedent(text))
        return path


class _ConfigTestCase(TestCase):
    """Work in a temporary directory with C{etc/config.yaml} as the config."""

    def setUp(self) -> None:
        root = self.mktemp()
        os.makedirs(root)
        self.files = _Files(root)
        self.config = os.path.join(root, "etc", "config.yaml")
        self.etc = os.path.join(root, "etc")

    def app(self, directory: str, config: str, **schemas: str) -> None:
        """Write C{etc/<directory>/config.yaml} and schema files."""
        self.files.write(f"etc/{directory}/config.yaml", config)
        for name, text in schemas.items():
            self.files.write(f"etc/{directory}/{name}.graphql", text)

    def load(self, text: str):
        self.files.write("etc/config.yaml", text)
        return load_config(self.config)

    def assertError(self, text: str, file: str, *parts: str) -> str:
        """Loading C{text} fails with one line naming C{file} and C{parts}."""
        self.files.write("etc/config.yaml", text)
        error = self.assertRaises(ConfigError, load_config, self.config)
        message = str(error)
        self.assertTrue(message.startswith(file + ":"), message)
        for part in parts:
            self.assertIn(part, message)
        self.assertNotIn("\n", message)
        return message


class ServerConfigTests(_ConfigTestCase):
    """
    The server config file: defaults, overrides and errors.
    """

    def test_defaults(self) -> None:
        """
        An empty file gives every default; the root directory is the config
        file's directory.
        """
        config = self.load("")
        self.assertEqual(config.path, self.config)
        self.assertEqual(config.root_directory, os.path.abspath(self.etc))
        self.assertEqual(config.http, HTTPConfig())
        self.assertEqual(config.http.host, "::")
        self.assertEqual(config.http.port, 9996)
        self.assertEqual(config.tls, TLSConfig())
        self.assertEqual(config.ws, WSConfig())
        self.assertEqual(config.sse, SSEConfig())
        self.assertEqual(config.operations_api, OpsConfig())
        self.assertEqual(config.storage, StorageConfig())
        self.assertEqual(config.logging, LoggingConfig())
        self.assertEqual(config.applications, ())

    def test_overrides(self) -> None:
        """
        Every key sets its attribute; relative paths resolve against the
        config file's directory.
        """
        config = self.load(
            """
            environment: production
            rootDirectory: ../data
            http:
              host: 127.0.0.1
              port: 0
              cors: false
              corsAccessList: ["https://a.example", "https://b.example"]
              maxBodySize: 10
              maxInFlightRequests: 2
              maxConnections: 3
            tls:
              enabled: true
              autoGenerate: false
              privateKey: certs/key.pem
              certificate: /abs/cert.pem
            ws:
              pingInterval: 1
              pingTimeout: 2.5
              maxMessageSize: 100
              queueSize: 4
              maxMessagesPerSecond: 5
            sse:
              pingInterval: 0.5
            operationsApi:
              enabled: false
              host: "::1"
              port: 65535
            storage:
              maxBatch: 7
            logging:
              level: debug
            """
        )
        root = os.path.dirname(os.path.abspath(self.etc))
        self.assertEqual(config.root_directory, os.path.join(root, "data"))
        self.assertEqual(
            config.http,
            HTTPConfig("127.0.0.1", 0, False, ("https://a.example", "https://b.example"), 10, 2, 3),
        )
        self.assertEqual(
            config.tls,
            TLSConfig(True, False, os.path.join(root, "etc", "certs", "key.pem"), "/abs/cert.pem"),
        )
        self.assertEqual(config.ws, WSConfig(1.0, 2.5, 100, 4, 5))
        self.assertIsInstance(config.ws.ping_interval, float)
        self.assertEqual(config.sse, SSEConfig(0.5))
        self.assertEqual(config.operations_api, OpsConfig(False, "::1", 65535))
        self.assertEqual(config.storage, StorageConfig(7))
        self.assertEqual(config.logging, LoggingConfig("debug"))

    def test_empty_section(self) -> None:
        """
        A section given with no keys (YAML null) keeps its defaults.
        """
        self.assertEqual(self.load("http:\n").http, HTTPConfig())

    def test_missing_file(self) -> None:
        """
        A config file that does not exist is named.
        """
        missing = os.path.join(self.etc, "nope.yaml")
        error = self.assertRaises(ConfigError, load_config, missing)
        self.assertEqual(str(error), f"{missing}: file not found")

    def test_yaml_syntax(self) -> None:
        """
        A YAML syntax error gives the file and line.
        """
        self.assertError("http:\n  port: 1\n  host: [\n", self.config + ":4", "YAML syntax error")
        self.assertError("a: b\nc: d: e\n", self.config + ":2", "YAML syntax error")

    def test_duplicate_yaml_key(self) -> None:
        """
        A key given twice is an error, not a silent override.
        """
        self.assertError(
            "http:\n  port: 1\n  port: 2\n", self.config + ":3", "duplicate key 'port'"
        )

    def test_not_mapping(self) -> None:
        """
        The top level must be a mapping.
        """
        self.assertError("- a\n- b\n", self.config, "top level must be a mapping")
        self.assertError("http\n", self.config, "top level must be a mapping")

    def test_unknown_keys(self) -> None:
        """
        Unknown keys are named, at the top level and inside sections.
        """
        self.assertError("htp: {}\n", self.config, "unknown key 'htp'")
        self.assertError("http:\n  prot: 1\n", self.config, "unknown key 'http.prot'")

    def test_wrong_types(self) -> None:
        """
        Each wrongly typed value is named with its key and the value given.
        """
        cases = [
            ("http:\n  port: abc\n", "http.port: expected an integer, got 'abc'"),
            ("http:\n  port: true\n", "http.port: expected an integer, got true"),
            ("http:\n  port: 80.5\n", "http.port: expected an integer, got 80.5"),
            ("http:\n  cors: 'yes'\n", "http.cors: expected true or false, got 'yes'"),
            ("http:\n  host: 1\n", "http.host: expected a string, got 1"),
            ("http:\n  corsAccessList: '*'\n", "http.corsAccessList: expected a list"),
            ("http:\n  corsAccessList: [1]\n", "http.corsAccessList[0]: expected a string, got 1"),
            ("http:\n  maxBodySize: 0\n", "http.maxBodySize: expected an integer > 0, got 0"),
            ("http: 5\n", "http: expected a mapping, got 5"),
            ("tls:\n  enabled: 1\n", "tls.enabled: expected true or false, got 1"),
            ("ws:\n  pingInterval: 0\n", "ws.pingInterval: expected a number of seconds > 0"),
            ("ws:\n  pingTimeout: -1\n", "ws.pingTimeout: expected a number of seconds > 0"),
            ("ws:\n  pingTimeout: .inf\n", "ws.pingTimeout: expected a number of seconds > 0"),
            ("ws:\n  pingTimeout: false\n", "ws.pingTimeout: expected a number of seconds > 0"),
            ("ws:\n  queueSize: 1.5\n", "ws.queueSize: expected an integer, got 1.5"),
            ("sse:\n  pingInterval: x\n", "sse.pingInterval: expected a number of seconds > 0"),
            ("operationsApi:\n  port: '9995'\n", "operationsApi.port: expected an integer"),
            ("storage:\n  maxBatch: -1\n", "storage.maxBatch: expected an integer > 0"),
            ("logging:\n  level: verbose\n", "logging.level: expected one of error, warn"),
            ("environment: 3\n", "environment: expected a string, got 3"),
            ("rootDirectory: [a]\n", "rootDirectory: expected a string, got a list"),
            ("applications: app\n", "applications: expected a list of strings"),
            # YAML 1.1 reads a bare off as false
            ("applications: [on, off]\n", "applications[0]: expected a string, got true"),
        ]
        for text, message in cases:
            self.assertError(text, self.config, message)

    def test_ports(self) -> None:
        """
        Ports 0..65535 are accepted, others refused.
        """
        self.assertEqual(self.load("http:\n  port: 0\n").http.port, 0)
        self.assertEqual(self.load("operationsApi:\n  port: 65535\n").operations_api.port, 65535)
        self.assertError("http:\n  port: 65536\n", self.config, "http.port: expected a port number")
        self.assertError(
            "operationsApi:\n  port: -1\n",
            self.config,
            "operationsApi.port: expected a port number",
        )

    def test_tls_pairs(self) -> None:
        """
        Key and certificate come together; enabled TLS without them needs
        autoGenerate.
        """
        self.assertError(
            "tls:\n  privateKey: k.pem\n",
            self.config,
            "tls.certificate: required when tls.privateKey is given",
        )
        self.assertError(
            "tls:\n  certificate: c.pem\n",
            self.config,
            "tls.privateKey: required when tls.certificate is given",
        )
        self.assertError("tls:\n  autoGenerate: false\n", self.config, "tls:", "autoGenerate")
        tls = self.load("tls:\n  enabled: false\n  autoGenerate: false\n").tls
        self.assertEqual(tls, TLSConfig(enabled=False, auto_generate=False))

    def test_parse_config(self) -> None:
        """
        L{parse_config} takes already-parsed data and names the given path.
        """
        config = parse_config({"http": {"port": 1}}, self.config)
        self.assertEqual(config.http.port, 1)
        error = self.assertRaises(ConfigError, parse_config, {"http": {"port": "x"}}, "x.yaml")
        self.assertEqual(str(error), "x.yaml: http.port: expected an integer, got 'x'")

    def test_relative_config_path(self) -> None:
        """
        With a relative config path, errors name files relative to the working
        directory, as given.
        """
        self.app("my-app", "name: My App\nschemas: [schema.graphql]\n")
        self.files.write("etc/config.yaml", "applications: [my-app]\n")
        cwd = os.getcwd()
        os.chdir(self.files.root)
        self.addCleanup(os.chdir, cwd)
        error = self.assertRaises(ConfigError, load_config, "etc/config.yaml")
        self.assertEqual(
            str(error), "etc/my-app/config.yaml: schemas[0]: file not found: schema.graphql"
        )


class ApplicationConfigTests(_ConfigTestCase):
    """
    Application directories listed under C{applications}.
    """

    def appConfig(self, directory: str) -> str:
        return os.path.join(self.etc, directory, "config.yaml")

    def test_app_defaults(self) -> None:
        """
        An app with only a name gets its directory name as id, REST only, no
        tables and no resources.
        """
        self.app("shop", "name: Shop\n")
        (app,) = self.load("applications: [shop]\n").applications
        self.assertEqual(app.app_id, "shop")
        self.assertEqual(app.name, "Shop")
        self.assertEqual(app.directory, os.path.abspath(os.path.join(self.etc, "shop")))
        self.assertEqual((app.rest, app.ws, app.sse, app.graphql), (True, False, False, False))
        self.assertEqual((app.tables, app.resources, app.custom), ((), (), {}))
        self.assertEqual((app.version, app.description), (None, None))

    def test_app_fields(self) -> None:
        """
        Every app key is read.
        """
        self.app(
            "shop",
            """
            name: Shop
            app_id: store
            version: "1.0.0"
            description: A shop
            enabled: true
            rest: false
            ws: true
            sse: true
            graphql: true
            schemas: []
            custom:
              jwt: {ttl: 900}
            """,
        )
        (app,) = self.load("applications: [shop]\n").applications
        self.assertEqual(app.app_id, "store")
        self.assertEqual((app.version, app.description), ("1.0.0", "A shop"))
        self.assertEqual((app.rest, app.ws, app.sse, app.graphql), (False, True, True, True))
        self.assertEqual(app.custom, {"jwt": {"ttl": 900}})

    def test_disabled_skipped(self) -> None:
        """
        Disabled applications are not loaded, so their problems do not matter.
        """
        self.app("disabled", "name: Old\nenabled: false\nschemas: [missing.graphql]\n")
        self.app("active", "name: New\n")
        apps = self.load("applications: [disabled, active]\n").applications
        self.assertEqual([a.app_id for a in apps], ["active"])

    def test_schemas(self) -> None:
        """
        Several apps with several schema files: tables carry the app's
        database and interface flags, overridden per table by @export.
        """
        self.app(
            "shop",
            "name: Shop\nsse: true\nschemas: [a.graphql, b.graphql]\n",
            a=PRODUCT,
            b="""
            type Order @table @export(sse: false, ws: true) { id: ID! @primaryKey }
            type Hidden @table { id: ID! @primaryKey }
            """,
        )
        self.app(
            "chat",
            "name: Chat\nrest: false\nschemas: [schema.graphql]\n",
            schema="""
            type Message @table(database: "messages") @export(rest: true)
              { id: ID! @primaryKey }
            """,
        )
        shop, chat = self.load("applications: [shop, chat]\n").applications
        tables = {t.name: t for t in shop.tables}
        self.assertEqual(list(tables), ["Product", "Order", "Hidden"])
        product, order, hidden = tables["Product"], tables["Order"], tables["Hidden"]
        self.assertEqual(product.database, "shop")
        self.assertEqual((product.rest, product.ws, product.sse), (True, False, True))
        self.assertEqual((order.rest, order.ws, order.sse), (True, True, False))
        self.assertFalse(hidden.exported)
        self.assertEqual(product.source, os.path.join(self.etc, "shop", "a.graphql"))
        (message,) = chat.tables
        self.assertEqual(message.database, "messages")
        self.assertTrue(message.rest)

    def test_schema_errors_propagate(self) -> None:
        """
        A bad schema is reported by the schema parser with its file.
        """
        self.app("shop", "name: Shop\nschemas: [a.graphql]\n", a="type X @table { a: Nope }")
        self.assertError(
            "applications: [shop]\n", os.path.join(self.etc, "shop", "a.graphql"), "Nope"
        )

    def test_resources(self) -> None:
        """
        Resource globs are expanded (sorted, files only), plain paths kept, in
        the order given without repeats.
        """
        self.app("shop", "name: Shop\nresources: [main.py, 'resources/*.py', resources/b.py]\n")
        for name in ("main.py", "resources/b.py", "resources/a.py", "resources/c.txt"):
            self.files.write(f"etc/shop/{name}", "")
        os.makedirs(os.path.join(self.etc, "shop", "resources", "dir.py"))
        (app,) = self.load("applications: [shop]\n").applications
        self.assertEqual(app.resources, ("main.py", "resources/a.py", "resources/b.py"))

    def test_missing_resource(self) -> None:
        """
        A plain resource path that does not exist is an error; a glob matching
        nothing is not.
        """
        self.app("shop", "name: Shop\nresources: ['none/*.py', gone.py]\n")
        self.assertError(
            "applications: [shop]\n",
            self.appConfig("shop"),
            "resources[1]: file not found: gone.py",
        )

    def test_missing_schema(self) -> None:
        """
        A schema file that does not exist is named with its index.
        """
        self.app("my-app", "name: My App\nschemas: [schema.graphql]\n")
        self.assertError(
            "applications: [my-app]\n",
            self.appConfig("my-app"),
            "schemas[0]: file not found: schema.graphql",
        )

    def test_missing_directory(self) -> None:
        """
        An application directory that does not exist is named.
        """
        self.assertError(
            "applications: [nope]\n", self.config, "applications[0]: no such directory: nope"
        )

    def test_missing_app_config(self) -> None:
        """
        An application directory without config.yaml is named.
        """
        os.makedirs(os.path.join(self.etc, "empty"))
        self.assertError(
            "applications: [empty]\n", self.config, "applications[0]: file not found", "config.yaml"
        )

    def test_app_errors(self) -> None:
        """
        Problems inside an app's config.yaml name that file and the key.
        """
        cases = [
            ("description: x\n", "name: required"),
            ("name: 5\n", "name: expected a string, got 5"),
            ("name: A\nrest: 'no'\n", "rest: expected true or false, got 'no'"),
            ("name: A\nschemas: a.graphql\n", "schemas: expected a list of strings"),
            ("name: A\ncustom: [1]\n", "custom: expected a mapping, got a list"),
            ("name: A\napp_id: 'a/b'\n", "app_id: must match [A-Za-z0-9_-]+, got 'a/b'"),
            ("name: A\nextension: true\n", "unknown key 'extension'"),
            ("name: A\nversion: 1.0\n", "version: expected a string, got 1.0"),
            ("[1, 2]\n", "top level must be a mapping"),
            ("name: [\n", "YAML syntax error"),
        ]
        for text, message in cases:
            self.app("shop", text)
            self.assertError("applications: [shop]\n", self.appConfig("shop"), message)

    def test_bad_directory_name(self) -> None:
        """
        A directory name that is not a valid app_id must be overridden.
        """
        self.app("my app", "name: A\n")
        self.assertError("applications: ['my app']\n", self.appConfig("my app"), "app_id:")
        self.app("my app", "name: A\napp_id: my-app\n")
        (app,) = self.load("applications: ['my app']\n").applications
        self.assertEqual(app.app_id, "my-app")

    def test_duplicate_app_id(self) -> None:
        """
        Two applications with one app_id are refused.
        """
        self.app("a", "name: A\napp_id: same\n")
        self.app("b", "name: B\napp_id: same\n")
        self.assertError(
            "applications: [a, b]\n",
            self.appConfig("b"),
            "app_id: 'same' is already used by",
            self.appConfig("a"),
        )

    def test_duplicate_path(self) -> None:
        """
        Two tables of one app on the same URL path are refused.
        """
        self.app(
            "shop",
            "name: Shop\nschemas: [a.graphql, b.graphql]\n",
            a=PRODUCT,
            b='type Item @table(database: "other") @export(name: "Product")'
            " { id: ID! @primaryKey }",
        )
        schema_b = os.path.join(self.etc, "shop", "b.graphql")
        self.assertError(
            "applications: [shop]\n", schema_b, "table Item", "URL path 'Product'", "a.graphql"
        )

    def test_same_path_other_apps(self) -> None:
        """
        Two apps may each have a table on the same path, in their own
        databases.
        """
        self.app("a", "name: A\nschemas: [s.graphql]\n", s=PRODUCT)
        self.app("b", "name: B\nschemas: [s.graphql]\n", s=PRODUCT)
        apps = self.load("applications: [a, b]\n").applications
        self.assertEqual([t.database for app in apps for t in app.tables], ["a", "b"])

    def test_duplicate_storage(self) -> None:
        """
        Two tables in the same database and storage table are refused, within
        one app and across apps.
        """
        self.app(
            "shop",
            "name: Shop\nschemas: [a.graphql, b.graphql]\n",
            a=PRODUCT,
            b='type Item @table(table: "Product") @export { id: ID! @primaryKey }',
        )
        self.assertError(
            "applications: [shop]\n",
            os.path.join(self.etc, "shop", "b.graphql"),
            "table Item",
            "storage shop.Product",
        )
        self.app("a", "name: A\nschemas: [s.graphql]\n", s=PRODUCT)
        self.app(
            "b",
            "name: B\nschemas: [s.graphql]\n",
            s='type P @table(database: "a", table: "Product") { id: ID! @primaryKey }',
        )
        self.assertError(
            "applications: [a, b]\n",
            os.path.join(self.etc, "b", "s.graphql"),
            "storage a.Product",
            os.path.join(self.etc, "a", "s.graphql"),
        )

    def test_database_name(self) -> None:
        """
        A database name that would escape the data directory is refused.
        """
        self.app(
            "shop",
            "name: Shop\nschemas: [a.graphql]\n",
            a='type P @table(database: "../x") { id: ID! @primaryKey }',
        )
        self.assertError(
            "applications: [shop]\n", os.path.join(self.etc, "shop", "a.graphql"), "database '../x'"
        )
