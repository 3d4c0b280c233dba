"""The settings: one frozen object built from the environment, in this one place.

Both the web app and the workers take a `Settings` explicitly; nothing reads
`os.environ` at import time. A bad value raises `SettingsError` naming the variable.
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields
from typing import Any, TypeVar

T = TypeVar("T")

# A signing key shorter than this is refused wherever tokens are signed or checked: an
# HMAC key is only as strong as it is long, and an empty one makes every token forgeable.
MIN_SECRET_BYTES = 32
# Connections a web process takes beyond its stream cap by default (PROGRESS_MAX_CONNECTIONS
# unset): the JSON API, /healthz and idle kept-alive connections.
CONNECTION_HEADROOM = 1000


class SettingsError(ValueError):
    """A variable of the environment has a value the product cannot run with."""


def _int(minimum: int, maximum: int | None = None) -> Callable[[str], int]:
    def parse(raw: str) -> int:
        value = int(raw.strip())
        if value < minimum or (maximum is not None and value > maximum):
            bound = f">= {minimum}" if maximum is None else f"in {minimum}..{maximum}"
            raise ValueError(f"must be an integer {bound}")
        return value

    return parse


def _float(minimum: float) -> Callable[[str], float]:
    def parse(raw: str) -> float:
        value = float(raw.strip())
        if not value >= minimum or value == float("inf"):
            raise ValueError(f"must be a finite number >= {minimum}")
        return value

    return parse


def _choice(*choices: str) -> Callable[[str], str]:
    def parse(raw: str) -> str:
        value = raw.strip().lower()
        if value not in choices:
            raise ValueError(f"must be one of {', '.join(choices)}")
        return value

    return parse


CLUSTER_SCHEMES = ("redis+cluster://", "rediss+cluster://")


def _redis_url(raw: str) -> str:
    value = raw.strip()
    if value.startswith(CLUSTER_SCHEMES):
        cluster_seeds(value)  # raises on a bad seed list
        return value
    if not value.startswith(("redis://", "rediss://", "unix://")):
        raise ValueError(
            "must be a redis://, rediss:// or unix:// URL, or redis+cluster://host:port,... "
            "(rediss+cluster:// with TLS) for a Redis Cluster"
        )
    return value


def _single_redis_url(raw: str) -> str:
    value = _redis_url(raw)
    if is_cluster_url(value):
        raise ValueError(
            "must be a non-cluster redis://, rediss:// or unix:// URL (arq "
            "does not support Redis Cluster)"
        )
    return value


def is_cluster_url(url: str) -> bool:
    return url.startswith(CLUSTER_SCHEMES)


def cluster_seeds(url: str) -> tuple[tuple[str, int], ...]:
    """The (host, port) seed nodes of a `redis+cluster://[user:pass@]h1:p1,h2:p2[/0]` URL."""
    rest = url.split("://", 1)[1]
    rest = rest.split("?", 1)[0]
    hosts, _, db = rest.partition("/")
    if db not in ("", "0"):
        raise ValueError("a Redis Cluster has database 0 only: drop the /<db>")
    hosts = hosts.rpartition("@")[2]
    seeds = []
    for entry in hosts.split(","):
        host, sep, port = entry.strip().rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(f"seed {entry!r} is not host:port")
        seeds.append((host.strip("[]"), int(port)))
    return tuple(seeds)


def _broker_url(raw: str) -> str:
    value = raw.strip()
    if "://" not in value:
        raise ValueError("must be a URL such as redis://host:6379/0")
    return value


def _key_prefix(raw: str) -> str:
    value = raw.strip()
    if not value or any(c in value for c in "{} \t\r\n"):
        raise ValueError("must be non-empty, without braces or whitespace")
    return value


def _origins(raw: str) -> tuple[str, ...]:
    origins = tuple(o.strip().rstrip("/") for o in raw.split(",") if o.strip())
    for origin in origins:
        if origin == "*" or "://" not in origin:
            raise ValueError(f"{origin!r} is not an origin like https://example.com")
    return origins


def _proxies(raw: str) -> tuple[str, ...]:
    """Addresses or networks (`10.0.0.1`, `10.0.0.0/8`, `::1`), comma-separated, or `*`
    alone (any peer: only where nothing but the proxy can reach the port)."""
    entries = tuple(p.strip() for p in raw.split(",") if p.strip())
    if "*" in entries and len(entries) > 1:
        raise ValueError("* trusts every peer and cannot be combined with addresses")
    for entry in entries:
        if entry != "*":
            try:
                ipaddress.ip_network(entry, strict=False)
            except ValueError:
                raise ValueError(f"{entry!r} is not an IP address or network") from None
    return entries


def _text(raw: str) -> str:
    return raw


@dataclass(frozen=True, slots=True, kw_only=True)
class Settings:
    """Every knob of SPEC.md's configuration table, with its default."""

    redis_url: str = "redis://localhost:6379/0"
    celery_broker_url: str | None = None  # None: use redis_url (required in cluster mode)
    arq_redis_url: str | None = None  # the ARQ queue's Redis; None: use redis_url
    port: int = 8000
    auth: str = "token"
    secret: str | None = None
    token_ttl: int = 86400
    api_key: str | None = None
    key_prefix: str = "progress"
    history: int = 1000
    job_ttl: int = 86400
    max_event_bytes: int = 16384
    max_file_bytes: int = 10 * 1024 * 1024
    max_body_bytes: int = 1024 * 1024
    throttle_ms: int = 100
    lease_seconds: float = 30.0
    ping_seconds: float = 15.0
    client_queue: int = 1000
    send_timeout: float = 30.0
    max_streams: int = 10000
    max_streams_per_client: int = 500
    max_stream_seconds: float = 3600.0
    shutdown_seconds: float = 5.0
    cors_origins: tuple[str, ...] = ()
    post_rate: float = 5.0
    post_burst: int = 30
    max_watches_per_client: int = 1000
    log_lines_per_second: int = 20
    max_children: int = 1000  # children of one parent job (a group, chain or chord)
    max_header_bytes: int = 16384  # a request line and its headers, together
    request_timeout: float = 10.0  # seconds a request has to arrive whole
    max_connections: int | None = None  # None: max_streams + CONNECTION_HEADROOM
    trusted_proxies: tuple[str, ...] = ()  # peers whose X-Forwarded-For/-Proto are believed

    def __post_init__(self) -> None:
        self.check_redis()

    @property
    def connection_cap(self) -> int:
        """Client connections a web process takes: more than its streams, so that a
        full stream cap still leaves room for the JSON API and `/healthz`."""
        if self.max_connections is not None:
            return self.max_connections
        return self.max_streams + CONNECTION_HEADROOM

    @property
    def broker_url(self) -> str:
        return self.celery_broker_url or self.redis_url

    @property
    def arq_url(self) -> str:
        """The ARQ queue's Redis: never a cluster (arq does not support one)."""
        return self.arq_redis_url or self.redis_url

    @property
    def cluster(self) -> bool:
        """Progress state on a Redis Cluster (`REDIS_URL=redis+cluster://...`)."""
        return is_cluster_url(self.redis_url)

    def check_redis(self) -> None:
        """The Redis URLs go together: in cluster mode the Celery broker and the ARQ queue
        need their own non-cluster Redis (neither kombu nor arq supports a cluster)."""
        if not self.cluster:
            return
        if not self.celery_broker_url:
            raise SettingsError(
                "CELERY_BROKER_URL is not set: with REDIS_URL on a Redis Cluster the Celery "
                "broker needs its own non-cluster URL (kombu does not support Redis Cluster)"
            )
        if is_cluster_url(self.celery_broker_url) or "+cluster" in self.celery_broker_url:
            raise SettingsError(
                f"CELERY_BROKER_URL={self.celery_broker_url!r}: must be a non-cluster URL "
                "(kombu does not support Redis Cluster)"
            )
        if not self.arq_redis_url:
            raise SettingsError(
                "ARQ_REDIS_URL is not set: with REDIS_URL on a Redis Cluster the ARQ queue "
                "needs its own non-cluster redis:// URL (arq does not support Redis Cluster)"
            )
        if is_cluster_url(self.arq_redis_url):
            raise SettingsError(
                f"ARQ_REDIS_URL={self.arq_redis_url!r}: must be a non-cluster redis:// URL "
                "(arq does not support Redis Cluster)"
            )

    @property
    def auth_enabled(self) -> bool:
        return self.auth == "token"

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """Build the settings from `environ` (default: the process environment)."""
        env = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for name, (attr, parse) in _VARIABLES.items():
            raw = env.get(name)
            if raw is None or (raw.strip() == "" and attr != "cors_origins"):
                continue
            try:
                values[attr] = parse(raw)
            except ValueError as exc:
                raise SettingsError(f"{name}={raw!r}: {exc}") from None
        settings = cls(**values)
        if settings.connection_cap <= settings.max_streams:
            raise SettingsError(
                f"PROGRESS_MAX_CONNECTIONS={settings.connection_cap} must be above "
                f"PROGRESS_MAX_STREAMS={settings.max_streams}: each stream holds a connection"
            )
        return settings

    def replace(self, **changes: Any) -> Settings:
        current = {f.name: getattr(self, f.name) for f in fields(self)}
        return Settings(**{**current, **changes})

    def check_web(self) -> None:
        """What only the web process needs: a strong signing secret when auth is on."""
        if self.auth_enabled:
            check_secret(self.secret)


def check_secret(secret: str | None) -> str:
    """The secret itself, or `SettingsError` naming `PROGRESS_SECRET` when it is too weak."""
    if not secret:
        raise SettingsError(
            "PROGRESS_SECRET is not set: tokens cannot be signed or checked with "
            "PROGRESS_AUTH=token and no secret (set one of at least "
            f"{MIN_SECRET_BYTES} bytes, or PROGRESS_AUTH=none)"
        )
    if len(secret.encode()) < MIN_SECRET_BYTES:
        raise SettingsError(
            f"PROGRESS_SECRET is too short: {len(secret.encode())} bytes, at least "
            f"{MIN_SECRET_BYTES} needed (e.g. python -c 'import secrets; "
            "print(secrets.token_urlsafe(32))')"
        )
    return secret


_VARIABLES: dict[str, tuple[str, Callable[[str], Any]]] = {
    "REDIS_URL": ("redis_url", _redis_url),
    "CELERY_BROKER_URL": ("celery_broker_url", _broker_url),
    "ARQ_REDIS_URL": ("arq_redis_url", _single_redis_url),
    "PORT": ("port", _int(1, 65535)),
    "PROGRESS_AUTH": ("auth", _choice("token", "none")),
    "PROGRESS_SECRET": ("secret", _text),
    "PROGRESS_TOKEN_TTL": ("token_ttl", _int(1)),
    "PROGRESS_API_KEY": ("api_key", _text),
    "PROGRESS_KEY_PREFIX": ("key_prefix", _key_prefix),
    "PROGRESS_HISTORY": ("history", _int(1)),
    "PROGRESS_JOB_TTL": ("job_ttl", _int(1)),
    "PROGRESS_MAX_EVENT_BYTES": ("max_event_bytes", _int(256)),
    "PROGRESS_MAX_FILE_BYTES": ("max_file_bytes", _int(1)),
    "PROGRESS_MAX_BODY_BYTES": ("max_body_bytes", _int(64)),
    "PROGRESS_THROTTLE_MS": ("throttle_ms", _int(0)),
    "PROGRESS_LEASE_SECONDS": ("lease_seconds", _float(1.0)),
    "PROGRESS_PING_SECONDS": ("ping_seconds", _float(0.1)),
    "PROGRESS_CLIENT_QUEUE": ("client_queue", _int(2)),
    "PROGRESS_SEND_TIMEOUT": ("send_timeout", _float(0.1)),
    "PROGRESS_MAX_STREAMS": ("max_streams", _int(1)),
    "PROGRESS_MAX_STREAMS_PER_CLIENT": ("max_streams_per_client", _int(1)),
    "PROGRESS_MAX_STREAM_SECONDS": ("max_stream_seconds", _float(1.0)),
    "PROGRESS_SHUTDOWN_SECONDS": ("shutdown_seconds", _float(0.0)),
    "PROGRESS_CORS_ORIGINS": ("cors_origins", _origins),
    "PROGRESS_POST_RATE": ("post_rate", _float(0.0)),
    "PROGRESS_POST_BURST": ("post_burst", _int(1)),
    "PROGRESS_MAX_WATCHES_PER_CLIENT": ("max_watches_per_client", _int(1)),
    "PROGRESS_LOG_LINES_PER_SECOND": ("log_lines_per_second", _int(1)),
    "PROGRESS_MAX_CHILDREN": ("max_children", _int(1, 100_000)),
    "PROGRESS_TRUSTED_PROXIES": ("trusted_proxies", _proxies),
    "PROGRESS_MAX_HEADER_BYTES": ("max_header_bytes", _int(1024)),
    "PROGRESS_REQUEST_TIMEOUT": ("request_timeout", _float(0.1)),
    "PROGRESS_MAX_CONNECTIONS": ("max_connections", _int(2)),
}

VARIABLE_NAMES = tuple(_VARIABLES)
