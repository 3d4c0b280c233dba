"""Settings: SPEC.md's variables and defaults, and a clear error naming a bad one."""

from __future__ import annotations

import pytest

from progress_streamer.protocol.settings import (
    VARIABLE_NAMES,
    Settings,
    SettingsError,
    cluster_seeds,
)
from tests.support import ROOT

SPEC_VARIABLES = {
    "REDIS_URL", "CELERY_BROKER_URL", "PORT", "PROGRESS_AUTH", "PROGRESS_SECRET",
    "PROGRESS_TOKEN_TTL", "PROGRESS_API_KEY", "PROGRESS_KEY_PREFIX", "PROGRESS_HISTORY",
    "PROGRESS_JOB_TTL", "PROGRESS_MAX_EVENT_BYTES", "PROGRESS_MAX_FILE_BYTES",
    "PROGRESS_MAX_BODY_BYTES", "PROGRESS_THROTTLE_MS", "PROGRESS_LEASE_SECONDS",
    "PROGRESS_PING_SECONDS", "PROGRESS_CLIENT_QUEUE", "PROGRESS_SEND_TIMEOUT",
    "PROGRESS_MAX_STREAMS", "PROGRESS_MAX_STREAMS_PER_CLIENT", "PROGRESS_MAX_STREAM_SECONDS",
    "PROGRESS_SHUTDOWN_SECONDS", "PROGRESS_CORS_ORIGINS",
}  # fmt: skip
# Added by issues 14 and 17 (docs/configuration.md).
HARDENING_VARIABLES = {
    "PROGRESS_POST_RATE", "PROGRESS_POST_BURST", "PROGRESS_MAX_WATCHES_PER_CLIENT",
    "PROGRESS_LOG_LINES_PER_SECOND",
    "PROGRESS_TRUSTED_PROXIES", "PROGRESS_MAX_HEADER_BYTES", "PROGRESS_REQUEST_TIMEOUT",
    "PROGRESS_MAX_CONNECTIONS",
}  # fmt: skip
# Added by issue 15 (groups).
GROUP_VARIABLES = {"PROGRESS_MAX_CHILDREN"}
# Added by issue 16 (Redis Cluster: the ARQ queue's own non-cluster Redis).
SCALE_OUT_VARIABLES = {"ARQ_REDIS_URL"}


def test_the_variables_are_exactly_those_of_the_spec_the_hardening_and_later_issues() -> None:
    expected = SPEC_VARIABLES | HARDENING_VARIABLES | GROUP_VARIABLES | SCALE_OUT_VARIABLES
    assert set(VARIABLE_NAMES) == expected


def test_every_variable_is_in_the_configuration_table() -> None:
    table = (ROOT / "docs" / "configuration.md").read_text()
    assert [name for name in VARIABLE_NAMES if f"| `{name}` |" not in table] == []


def test_defaults_match_the_spec() -> None:
    s = Settings.from_env({})
    assert s.redis_url == "redis://localhost:6379/0"
    assert s.broker_url == s.redis_url
    assert (s.port, s.auth, s.token_ttl, s.key_prefix) == (8000, "token", 86400, "progress")
    assert (s.history, s.job_ttl, s.max_event_bytes) == (1000, 86400, 16384)
    assert (s.max_file_bytes, s.max_body_bytes, s.throttle_ms) == (10485760, 1048576, 100)
    assert (s.lease_seconds, s.ping_seconds, s.client_queue, s.send_timeout) == (30, 15, 1000, 30)
    assert (s.max_streams, s.max_streams_per_client) == (10000, 500)
    assert (s.max_stream_seconds, s.shutdown_seconds, s.cors_origins) == (3600, 5, ())
    assert s.trusted_proxies == () and s.max_header_bytes == 16384
    assert (s.request_timeout, s.max_connections, s.connection_cap) == (10, None, 11000)
    assert s.secret is None and s.api_key is None


def test_values_are_parsed() -> None:
    s = Settings.from_env(
        {
            "CELERY_BROKER_URL": "amqp://guest@localhost//",
            "PROGRESS_AUTH": "none",
            "PROGRESS_LEASE_SECONDS": "2.5",
            "PROGRESS_CORS_ORIGINS": "https://a.example, https://b.example/",
            "PROGRESS_TRUSTED_PROXIES": "10.0.0.5, 10.1.0.0/16,::1",
        }
    )
    assert s.trusted_proxies == ("10.0.0.5", "10.1.0.0/16", "::1")
    assert Settings.from_env({"PROGRESS_TRUSTED_PROXIES": "*"}).trusted_proxies == ("*",)
    assert s.broker_url == "amqp://guest@localhost//"
    assert not s.auth_enabled and s.lease_seconds == 2.5
    assert s.cors_origins == ("https://a.example", "https://b.example")


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("PORT", "eighty"),
        ("PORT", "70000"),
        ("PROGRESS_AUTH", "maybe"),
        ("PROGRESS_HISTORY", "0"),
        ("PROGRESS_LEASE_SECONDS", "nan"),
        ("REDIS_URL", "localhost:6379"),
        ("PROGRESS_CORS_ORIGINS", "*"),
        ("PROGRESS_KEY_PREFIX", "a{b}"),
        ("PROGRESS_TRUSTED_PROXIES", "proxy.internal"),
        ("PROGRESS_MAX_HEADER_BYTES", "100"),
        ("PROGRESS_REQUEST_TIMEOUT", "0"),
        ("PROGRESS_MAX_CONNECTIONS", "100"),  # not above PROGRESS_MAX_STREAMS (10000)
        ("PROGRESS_TRUSTED_PROXIES", "*, 10.0.0.1"),
    ],
)
def test_a_bad_value_names_its_variable(name: str, value: str) -> None:
    with pytest.raises(SettingsError, match=name):
        Settings.from_env({name: value})


def test_the_web_process_refuses_auth_without_a_secret() -> None:
    with pytest.raises(SettingsError, match="PROGRESS_SECRET"):
        Settings.from_env({}).check_web()
    with pytest.raises(SettingsError, match="PROGRESS_SECRET is too short"):
        Settings.from_env({"PROGRESS_SECRET": "short"}).check_web()
    Settings.from_env({"PROGRESS_AUTH": "none"}).check_web()


def test_the_connection_cap_follows_the_stream_cap_and_stays_above_it() -> None:
    assert Settings.from_env({"PROGRESS_MAX_STREAMS": "20000"}).connection_cap == 21000
    both = {"PROGRESS_MAX_STREAMS": "100", "PROGRESS_MAX_CONNECTIONS": "150"}
    assert Settings.from_env(both).connection_cap == 150
    with pytest.raises(SettingsError, match="PROGRESS_MAX_CONNECTIONS=100 must be above"):
        Settings.from_env({**both, "PROGRESS_MAX_CONNECTIONS": "100"})


CLUSTER = "redis+cluster://10.0.0.1:7000,10.0.0.2:7001"
SINGLE = "redis://10.0.0.9:6379/0"


def test_a_cluster_url_turns_cluster_mode_on_with_its_seeds() -> None:
    s = Settings.from_env(
        {"REDIS_URL": CLUSTER, "CELERY_BROKER_URL": SINGLE, "ARQ_REDIS_URL": SINGLE}
    )
    assert s.cluster and s.arq_url == SINGLE and s.broker_url == SINGLE
    assert cluster_seeds(s.redis_url) == (("10.0.0.1", 7000), ("10.0.0.2", 7001))
    assert cluster_seeds("rediss+cluster://u:p@h:1/0") == (("h", 1),)
    plain = Settings.from_env({"REDIS_URL": SINGLE})
    assert not plain.cluster and plain.arq_url == SINGLE


@pytest.mark.parametrize(
    ("env", "named"),
    [
        ({"ARQ_REDIS_URL": SINGLE}, "CELERY_BROKER_URL is not set"),
        ({"CELERY_BROKER_URL": SINGLE}, "ARQ_REDIS_URL is not set"),
        ({"CELERY_BROKER_URL": CLUSTER, "ARQ_REDIS_URL": SINGLE}, "CELERY_BROKER_URL="),
        ({"CELERY_BROKER_URL": SINGLE, "ARQ_REDIS_URL": CLUSTER}, "ARQ_REDIS_URL="),
    ],
)
def test_cluster_mode_needs_its_own_non_cluster_broker_and_queue(
    env: dict[str, str], named: str
) -> None:
    with pytest.raises(SettingsError, match=named):
        Settings.from_env({"REDIS_URL": CLUSTER, **env})


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("REDIS_URL", "redis+cluster://host-without-port"),
        ("REDIS_URL", "redis+cluster://h:1/3"),
        ("REDIS_URL", "redis+cluster://h:99999"),
        ("ARQ_REDIS_URL", "redis+cluster://h:1"),
        ("ARQ_REDIS_URL", "http://h:1"),
    ],
)
def test_a_bad_redis_url_is_refused_naming_it(name: str, value: str) -> None:
    with pytest.raises(SettingsError, match=name):
        Settings.from_env({name: value})
