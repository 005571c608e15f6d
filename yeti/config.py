"""
Server configuration: the server C{config.yaml} and the applications it lists.

Every key is described once, in the spec tables below (YAML key, attribute,
checker). Any problem is a L{ConfigError} with one line naming the file and
the key at fault, for example::

    etc/config.yaml: http.port: expected an integer, got 'abc'
"""

from __future__ import annotations

import glob
import math
import os
import re
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import yaml

from yeti.errors import ConfigError
from yeti.schema import InterfaceDefaults, Table, parse_schema

_NAME = re.compile(r"[A-Za-z0-9_-]+")
_LOG_LEVELS = ("error", "warn", "info", "debug", "trace")
_GLOB_CHARS = frozenset("*?[")


@dataclass(frozen=True)
class HTTPConfig:
    """The application API listener (HTTPS unless TLS is disabled)."""

    host: str = "::"
    port: int = 9996
    cors: bool = True
    cors_access_list: tuple[str, ...] = ("*",)
    max_body_size: int = 1048576
    max_in_flight_requests: int = 500
    max_connections: int = 10000


@dataclass(frozen=True)
class TLSConfig:
    """TLS for the HTTP listener; key and certificate paths are absolute."""

    enabled: bool = True
    auto_generate: bool = True
    private_key: str | None = None
    certificate: str | None = None


@dataclass(frozen=True)
class WSConfig:
    """WebSocket limits; intervals and timeouts are in seconds."""

    ping_interval: float = 5.0
    ping_timeout: float = 10.0
    max_message_size: int = 1048576
    queue_size: int = 256
    max_messages_per_second: int = 1000


@dataclass(frozen=True)
class SSEConfig:
    """Server-Sent Events; the keep-alive comment interval in seconds."""

    ping_interval: float = 15.0


@dataclass(frozen=True)
class OpsConfig:
    """The plain-HTTP operations API listener."""

    enabled: bool = True
    host: str = "127.0.0.1"
    port: int = 9995


@dataclass(frozen=True)
class StorageConfig:
    """Storage tuning: the most writes committed in one transaction."""

    max_batch: int = 512


@dataclass(frozen=True)
class LoggingConfig:
    """Log level: one of error, warn, info, debug, trace."""

    level: str = "info"


@dataclass(frozen=True)
class AppConfig:
    """
    One enabled application.

    @ivar directory: the application directory, absolute.
    @ivar resources: custom resource files, relative to C{directory}, globs
        expanded.
    """

    app_id: str
    name: str
    directory: str
    rest: bool
    ws: bool
    sse: bool
    graphql: bool
    tables: tuple[Table, ...]
    resources: tuple[str, ...]
    custom: dict
    version: str | None
    description: str | None


@dataclass(frozen=True)
class ServerConfig:
    """The whole server configuration; C{root_directory} is absolute."""

    path: str
    root_directory: str
    http: HTTPConfig
    tls: TLSConfig
    ws: WSConfig
    sse: SSEConfig
    operations_api: OpsConfig
    storage: StorageConfig
    logging: LoggingConfig
    applications: tuple[AppConfig, ...]


# --- value checkers: return the converted value or raise _Invalid -------------


class _Invalid(Exception):
    """A value does not fit its key; the caller adds file and key."""

    def __init__(self, message: str, suffix: str = "") -> None:
        super().__init__(message)
        self.suffix = suffix  # e.g. "[2]" for an item of a list


def _show(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _string(value: Any) -> str:
    if not isinstance(value, str):
        raise _Invalid(f"expected a string, got {_show(value)}")
    return value


def _optional_string(value: Any) -> str | None:
    return None if value is None else _string(value)


def _boolean(value: Any) -> bool:
    if not isinstance(value, bool):
        raise _Invalid(f"expected true or false, got {_show(value)}")
    return value


def _integer(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise _Invalid(f"expected an integer, got {_show(value)}")
    return value


def _positive_integer(value: Any) -> int:
    if _integer(value) <= 0:
        raise _Invalid(f"expected an integer > 0, got {_show(value)}")
    return value


def _port(value: Any) -> int:
    if not 0 <= _integer(value) <= 65535:
        raise _Invalid(f"expected a port number 0..65535, got {_show(value)}")
    return value


def _seconds(value: Any) -> float:
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        or not math.isfinite(value)
        or value <= 0
    ):
        raise _Invalid(f"expected a number of seconds > 0, got {_show(value)}")
    return float(value)


def _log_level(value: Any) -> str:
    if _string(value) not in _LOG_LEVELS:
        raise _Invalid(f"expected one of {', '.join(_LOG_LEVELS)}, got {_show(value)}")
    return value


def _string_list(value: Any) -> tuple[str, ...]:
    if value is None:
        return ()
    if not isinstance(value, list):
        raise _Invalid(f"expected a list of strings, got {_show(value)}")
    for i, item in enumerate(value):
        if not isinstance(item, str):
            raise _Invalid(f"expected a string, got {_show(item)}", f"[{i}]")
    return tuple(value)


def _app_id(value: Any) -> str:
    if not _NAME.fullmatch(_string(value)):
        raise _Invalid(f"must match [A-Za-z0-9_-]+, got {_show(value)}")
    return value


def _mapping(value: Any) -> dict:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise _Invalid(f"expected a mapping, got {_show(value)}")
    return value


# --- the spec tables ------------------------------------------------------------

_Check = Callable[[Any], Any]

# section YAML key -> (dataclass, attribute of ServerConfig, {YAML key: (attribute, checker)})
_SECTIONS: dict[str, tuple[type, str, dict[str, tuple[str, _Check]]]] = {
    "http": (
        HTTPConfig,
        "http",
        {
            "host": ("host", _string),
            "port": ("port", _port),
            "cors": ("cors", _boolean),
            "corsAccessList": ("cors_access_list", _string_list),
            "maxBodySize": ("max_body_size", _positive_integer),
            "maxInFlightRequests": ("max_in_flight_requests", _positive_integer),
            "maxConnections": ("max_connections", _positive_integer),
        },
    ),
    "tls": (
        TLSConfig,
        "tls",
        {
            "enabled": ("enabled", _boolean),
            "autoGenerate": ("auto_generate", _boolean),
            "privateKey": ("private_key", _optional_string),
            "certificate": ("certificate", _optional_string),
        },
    ),
    "ws": (
        WSConfig,
        "ws",
        {
            "pingInterval": ("ping_interval", _seconds),
            "pingTimeout": ("ping_timeout", _seconds),
            "maxMessageSize": ("max_message_size", _positive_integer),
            "queueSize": ("queue_size", _positive_integer),
            "maxMessagesPerSecond": ("max_messages_per_second", _positive_integer),
        },
    ),
    "sse": (SSEConfig, "sse", {"pingInterval": ("ping_interval", _seconds)}),
    "operationsApi": (
        OpsConfig,
        "operations_api",
        {
            "enabled": ("enabled", _boolean),
            "host": ("host", _string),
            "port": ("port", _port),
        },
    ),
    "storage": (StorageConfig, "storage", {"maxBatch": ("max_batch", _positive_integer)}),
    "logging": (LoggingConfig, "logging", {"level": ("level", _log_level)}),
}

# top-level scalar keys of the server config
_SERVER_KEYS: dict[str, tuple[str, _Check]] = {
    "rootDirectory": ("root_directory", _string),
    "environment": ("environment", _string),
    "applications": ("applications", _string_list),
}

# keys of an application's config.yaml: (attribute, checker, default)
_APP_KEYS: dict[str, tuple[str, _Check, Any]] = {
    "name": ("name", _string, None),
    "app_id": ("app_id", _app_id, None),
    "version": ("version", _optional_string, None),
    "description": ("description", _optional_string, None),
    "enabled": ("enabled", _boolean, True),
    "rest": ("rest", _boolean, True),
    "ws": ("ws", _boolean, False),
    "sse": ("sse", _boolean, False),
    "graphql": ("graphql", _boolean, False),
    "schemas": ("schemas", _string_list, ()),
    "resources": ("resources", _string_list, ()),
    "custom": ("custom", _mapping, {}),
}


# --- loading --------------------------------------------------------------------


def load_config(path: str) -> ServerConfig:
    """
    Read the server config at C{path} and every application it lists.

    @raise ConfigError: on any problem, with one line naming file and key.
    """
    return parse_config(_read_yaml(path), path)


def parse_config(data: Any, path: str) -> ServerConfig:
    """
    Build a L{ServerConfig} from already-parsed YAML C{data}.

    @param path: the config file's path: named in errors, and the base of
        relative paths.
    """
    data = _top_level(data, path)
    base = os.path.dirname(path)
    values: dict[str, Any] = {}
    for key, value in data.items():
        if key in _SECTIONS:
            cls, attr, spec = _SECTIONS[key]
            values[attr] = _section(value, key, cls, spec, path)
        elif key in _SERVER_KEYS:
            attr, check = _SERVER_KEYS[key]
            values[attr] = _checked(check, value, path, key)
        else:
            raise ConfigError(f"{path}: unknown key {_show(key)}")
    for cls, attr, _spec in _SECTIONS.values():
        values.setdefault(attr, cls())
    tls = _tls(values["tls"], base, path)
    root = _resolve(base, values.get("root_directory", "."))
    loaded = [
        _application(entry, f"applications[{i}]", base, path)
        for i, entry in enumerate(values.get("applications", ()))
    ]
    enabled = [app for app in loaded if app is not None]
    _check_unique(enabled)
    return ServerConfig(
        path=path,
        root_directory=root,
        http=values["http"],
        tls=tls,
        ws=values["ws"],
        sse=values["sse"],
        operations_api=values["operations_api"],
        storage=values["storage"],
        logging=values["logging"],
        applications=tuple(app for app, _path in enabled),
    )


class _UniqueKeyLoader(yaml.SafeLoader):
    """A safe loader that refuses a key given twice in one mapping."""


def _construct_mapping(loader: _UniqueKeyLoader, node: yaml.MappingNode) -> dict:
    seen: set[Any] = set()
    for key_node, _value in node.value:
        key = loader.construct_object(key_node)
        if isinstance(key, (str, int, float, bool)) or key is None:
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {_show(key)}", key_node.start_mark
                )
            seen.add(key)
    return loader.construct_mapping(node)


_UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def _read_yaml(path: str) -> Any:
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except FileNotFoundError:
        raise ConfigError(f"{path}: file not found") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path}: cannot read: {_reason(e)}") from None
    try:
        return yaml.load(text, Loader=_UniqueKeyLoader)  # a SafeLoader subclass
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        line = f":{mark.line + 1}" if mark is not None else ""
        problem = e.problem or e.context or "invalid YAML"
        raise ConfigError(f"{path}{line}: YAML syntax error: {problem}") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: YAML syntax error: {_one_line(str(e))}") from None


def _reason(e: Exception) -> str:
    if isinstance(e, OSError) and e.strerror:
        return e.strerror
    return _one_line(str(e))


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _top_level(data: Any, path: str) -> dict:
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping, got {_show(data)}")
    return data


def _checked(check: _Check, value: Any, path: str, key: str) -> Any:
    try:
        return check(value)
    except _Invalid as e:
        raise ConfigError(f"{path}: {key}{e.suffix}: {e}") from None


def _section(
    data: Any, name: str, cls: type, spec: dict[str, tuple[str, _Check]], path: str
) -> Any:
    if data is None:
        return cls()
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: {name}: expected a mapping, got {_show(data)}")
    values = {}
    for key, value in data.items():
        if key not in spec:
            raise ConfigError(f"{path}: unknown key {_show(f'{name}.{key}')}")
        attr, check = spec[key]
        values[attr] = _checked(check, value, path, f"{name}.{key}")
    return cls(**values)


def _resolve(base: str, path: str) -> str:
    return os.path.abspath(os.path.join(base, os.path.expanduser(path)))


def _tls(tls: TLSConfig, base: str, path: str) -> TLSConfig:
    if (tls.private_key is None) != (tls.certificate is None):
        given, missing = (
            ("privateKey", "certificate")
            if tls.certificate is None
            else ("certificate", "privateKey")
        )
        raise ConfigError(f"{path}: tls.{missing}: required when tls.{given} is given")
    if tls.enabled and not tls.auto_generate and tls.private_key is None:
        raise ConfigError(
            f"{path}: tls: give privateKey and certificate, autoGenerate: true or enabled: false"
        )
    if tls.private_key is None or tls.certificate is None:
        return tls
    return replace(
        tls,
        private_key=_resolve(base, tls.private_key),
        certificate=_resolve(base, tls.certificate),
    )


def _application(entry: str, key: str, base: str, server_path: str) -> tuple[AppConfig, str] | None:
    """Load one application directory: (app, its config path), L{None} if disabled."""
    directory = os.path.normpath(os.path.join(base, os.path.expanduser(entry)))
    if not os.path.isdir(directory):
        raise ConfigError(f"{server_path}: {key}: no such directory: {entry}")
    path = os.path.join(directory, "config.yaml")
    if not os.path.isfile(path):
        raise ConfigError(f"{server_path}: {key}: file not found: {path}")
    data = _top_level(_read_yaml(path), path)
    values = {attr: default for attr, _check, default in _APP_KEYS.values()}
    for k, value in data.items():
        if k not in _APP_KEYS:
            raise ConfigError(f"{path}: unknown key {_show(k)}")
        attr, check, _default = _APP_KEYS[k]
        values[attr] = _checked(check, value, path, k)
    if "name" not in data:
        raise ConfigError(f"{path}: name: required")
    if not values["enabled"]:
        return None
    app_id = values["app_id"]
    if app_id is None:
        app_id = os.path.basename(os.path.abspath(directory))
        if not _NAME.fullmatch(app_id):
            raise ConfigError(
                f"{path}: app_id: directory name {app_id!r} is not a valid app_id "
                "([A-Za-z0-9_-]+); set app_id"
            )
    defaults = InterfaceDefaults(
        database=app_id,
        rest=values["rest"],
        ws=values["ws"],
        sse=values["sse"],
        graphql=values["graphql"],
    )
    tables: list[Table] = []
    for i, schema in enumerate(values["schemas"]):
        schema_path = os.path.join(directory, schema)
        text = _read_text(schema_path, path, f"schemas[{i}]", schema)
        tables.extend(parse_schema(text, schema_path, defaults))
    app = AppConfig(
        app_id=app_id,
        name=values["name"],
        directory=os.path.abspath(directory),
        rest=values["rest"],
        ws=values["ws"],
        sse=values["sse"],
        graphql=values["graphql"],
        tables=tuple(tables),
        resources=_resources(values["resources"], directory, path),
        custom=values["custom"],
        version=values["version"],
        description=values["description"],
    )
    return app, path


def _read_text(file: str, config_path: str, key: str, given: str) -> str:
    try:
        with open(file, encoding="utf-8") as f:
            return f.read()
    except FileNotFoundError:
        raise ConfigError(f"{config_path}: {key}: file not found: {given}") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"{config_path}: {key}: cannot read {given}: {_reason(e)}") from None


def _resources(entries: tuple[str, ...], directory: str, path: str) -> tuple[str, ...]:
    """Expand globs (sorted, files only) and check plain paths exist."""
    found: list[str] = []
    for i, entry in enumerate(entries):
        if _GLOB_CHARS & set(entry):
            matches = sorted(
                m
                for m in glob.glob(entry, root_dir=directory, recursive=True)
                if os.path.isfile(os.path.join(directory, m))
            )
        elif os.path.isfile(os.path.join(directory, entry)):
            matches = [entry]
        else:
            raise ConfigError(f"{path}: resources[{i}]: file not found: {entry}")
        found.extend(m for m in matches if m not in found)
    return tuple(found)


def _check_unique(apps: list[tuple[AppConfig, str]]) -> None:
    """Refuse two apps with one id, two tables on one URL or one storage table."""
    app_ids: dict[str, str] = {}
    storage: dict[tuple[str, str], Table] = {}
    for app, config in apps:
        if app.app_id in app_ids:
            raise ConfigError(
                f"{config}: app_id: {app.app_id!r} is already used by {app_ids[app.app_id]}"
            )
        app_ids[app.app_id] = config
        paths: dict[str, Table] = {}
        for table in app.tables:
            where = f"{table.source}: table {table.name}"
            if not _NAME.fullmatch(table.database):
                raise ConfigError(f"{where}: database {table.database!r} must match [A-Za-z0-9_-]+")
            if table.path in paths:
                other_table = paths[table.path]
                raise ConfigError(
                    f"{where}: URL path {table.path!r} is already used by table "
                    f"{other_table.name} ({other_table.source})"
                )
            paths[table.path] = table
            slot = (table.database, table.storage_name)
            if slot in storage:
                other_table = storage[slot]
                raise ConfigError(
                    f"{where}: storage {table.database}.{table.storage_name} is already "
                    f"used by table {other_table.name} ({other_table.source})"
                )
            storage[slot] = table


__all__ = [
    "AppConfig",
    "HTTPConfig",
    "LoggingConfig",
    "OpsConfig",
    "SSEConfig",
    "ServerConfig",
    "StorageConfig",
    "TLSConfig",
    "WSConfig",
    "load_config",
    "parse_config",
]
