"""Bad input, fuzzed with hypothesis against a live server (issue 6, item 8).

- Random job ids, tokens, Last-Event-ID values (negative, huge, non-numeric, another
  job's), params, bodies and headers on every endpoint: never a 5xx, never a traceback,
  every error in SPEC.md's JSON shape; and Redis's MONITOR shows that no key or channel
  name was ever built from an unvalidated id.
- Event payloads with line breaks, `\\r`, lone surrogates, NUL, U+2028 and HTML: SSE
  framing holds (one `message` event per event, data decoding to the same text).

The examples are derandomized, so a run is reproducible; `FUZZ_EXAMPLES` sets how many.
"""

from __future__ import annotations

import json
import re
import string
import threading
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import redis
from hypothesis import HealthCheck, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from progress_streamer.protocol.event import EventDraft
from progress_streamer.protocol.settings import Settings
from progress_streamer.protocol.status import JobStatus
from progress_streamer.web.tokens import job_signer, watch_signer
from tests.support import ROOT
from tests.support.reliability import report
from tests.support.server import (
    FakeRunner,
    ServerThread,
    SSEParser,
    SSEStream,
    publisher,
    running_server,
)

pytestmark = pytest.mark.slow

FUZZ_EXAMPLES = 300
ERROR_CODES = {
    "invalid_json",
    "payload_too_large",
    "unknown_task",
    "invalid_params",
    "not_found",
    "method_not_allowed",
    "unauthorized",
    "forbidden",
    "conflict",
    "too_many_streams",
    "not_ready",
    "internal",
}
SECRET = "fuzz-secret-0123456789-0123456789abcdef"
ID = r"[A-Za-z0-9_-]{1,64}"


def fuzz_settings(**changes: Any) -> hsettings:
    return hsettings(
        **{"max_examples": FUZZ_EXAMPLES, **changes},
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )


class Monitor:
    """Every command Redis ran while it was on (MONITOR), for the key-name audit."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.client = redis.Redis.from_url(url)
        self.lines: list[str] = []
        self.marker = f"stop-monitor-{uuid.uuid4().hex}"
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Monitor:
        self._thread.start()
        assert self._ready.wait(10)
        return self

    def _run(self) -> None:
        with self.client.monitor() as monitor:
            self._ready.set()
            for command in monitor.listen():
                line = command["command"]
                if self.marker in line:
                    return
                self.lines.append(line)

    def __exit__(self, *exc: object) -> None:
        with redis.Redis.from_url(self.url) as c:
            c.echo(self.marker)
        self._thread.join(10)
        self.client.close()


def bad_names(lines: list[str], prefix: str) -> list[str]:
    """Key or channel names under `prefix` that are not built from a valid id."""
    allowed = re.compile(
        rf"{prefix}:(leases|watch|watch:\{{{ID}\}}|\{{{ID}\}}:(state|history|file|events))"
    )
    bad = []
    for line in lines:
        for name in re.findall(rf'"({re.escape(prefix)}:[^"]*)"', line):
            if not allowed.fullmatch(name):
                bad.append(name)
    return bad


# -- strategies -------------------------------------------------------------------------

header_text = st.text(
    alphabet=st.characters(min_codepoint=0x20, max_codepoint=0xFF, exclude_characters="\x7f"),
    max_size=80,
)
any_text = st.text(max_size=80)
seq_text = st.one_of(
    st.integers(-(10**30), 10**30).map(str),
    st.sampled_from(["", "0", "-1", "1e3", " 2", "2 ", "0x10", "\uff11\uff12", "3.0", "9" * 400]),
    header_text,
)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | any_text,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(any_text, inner, max_size=4),
    max_leaves=12,
)


@st.composite
def requests(draw: st.DrawFn, known: dict[str, str]) -> dict[str, Any]:
    pairs = list(known.items())
    job, token = draw(
        st.one_of(
            st.sampled_from(pairs),  # a job with its own token: the request goes deep
            st.tuples(
                st.sampled_from(list(known)), st.none() | st.sampled_from(list(known.values()))
            ),
            st.tuples(
                st.one_of(
                    st.just(uuid.uuid4().hex),
                    any_text,
                    st.text(alphabet=string.ascii_letters + "-_", min_size=64, max_size=70),
                    st.sampled_from(["%00", "a%0d%0ab", "..", "%2e%2e", "a*", "a?b", "{x}", "a:b"]),
                ),
                st.none() | st.sampled_from(list(known.values())) | header_text,
            ),
        )
    )
    endpoint = draw(
        st.sampled_from(["status", "events", "result", "delete", "post", "watch", "watch_events"])
    )
    params = st.fixed_dictionaries(
        {},
        optional={
            "steps": st.integers(-5, 2000),
            "step_ms": st.integers(-5, 70_000),
            "fail_at": json_values,
        },
    )
    body = draw(
        st.one_of(
            json_values.map(lambda v: json.dumps(v).encode()),
            st.binary(max_size=200),
            st.builds(
                lambda task, params, runner: json.dumps(
                    {"task": task, "params": params, "runner": runner}
                ).encode(),
                st.sampled_from(["demo.report", "demo.fail", "nope", ""]),
                params | json_values,
                st.sampled_from(["celery", "arq", "x"]),
            ),
            st.builds(
                lambda jobs: json.dumps({"jobs": jobs}).encode(),
                st.lists(
                    st.sampled_from(pairs).map(lambda p: {"job_id": p[0], "token": p[1]})
                    | st.fixed_dictionaries(
                        {"job_id": json_values}, optional={"token": json_values}
                    ),
                    max_size=4,
                ),
            ),
        )
    )
    headers = draw(
        st.dictionaries(
            st.sampled_from(
                [
                    "Content-Type",
                    "Origin",
                    "Accept",
                    "Accept-Encoding",
                    "X-Forwarded-For",
                    "Cookie",
                    "Range",
                    "If-None-Match",
                ]
            ),
            header_text,
            max_size=3,
        )
    )
    return {
        "job": job,
        "token": token,
        "endpoint": endpoint,
        "body": body,
        "headers": headers,
        "last_event_id": draw(st.none() | seq_text),
        "query_last_event_id": draw(st.none() | seq_text),
        "bearer": draw(st.booleans()),
        "extra_query": draw(st.dictionaries(header_text, header_text, max_size=2)),
    }


def send(client: httpx.Client, req: dict[str, Any]) -> tuple[int, bytes, str]:
    """Make the request; streams are read to their first event (or their end)."""
    from urllib.parse import quote

    job = quote(req["job"], safe="") or "%20"
    headers = dict(req["headers"])
    params = dict(req["extra_query"])
    if req["token"] is not None:
        if req["bearer"]:
            headers["Authorization"] = f"Bearer {req['token']}"
        else:
            params["token"] = req["token"]
    if req["last_event_id"] is not None:
        headers["Last-Event-ID"] = req["last_event_id"]
    # HTTP trims the whitespace around header values (h11 refuses to send it).
    # Non-ASCII goes out as UTF-8 bytes (httpx only encodes ASCII itself).
    headers = {name: value.strip(" \t").encode() for name, value in headers.items()}
    if req["query_last_event_id"] is not None:
        params["last_event_id"] = req["query_last_event_id"]
    endpoint = req["endpoint"]
    method, url = {
        "status": ("GET", f"/api/v1/jobs/{job}"),
        "events": ("GET", f"/api/v1/jobs/{job}/events"),
        "result": ("GET", f"/api/v1/jobs/{job}/result"),
        "delete": ("DELETE", f"/api/v1/jobs/{job}"),
        "post": ("POST", "/api/v1/jobs"),
        "watch": ("POST", "/api/v1/watches"),
        "watch_events": ("GET", f"/api/v1/watches/{job}/events"),
    }[endpoint]
    content = req["body"] if method == "POST" else None
    request = client.build_request(method, url, params=params, headers=headers, content=content)
    response = client.send(request, stream=True)
    try:
        kind = response.headers.get("content-type", "")
        if kind.startswith("text/event-stream"):
            body = bytearray()
            for chunk in response.iter_raw():
                body += chunk
                if b"\ndata: " in body and body.endswith(b"\n\n"):
                    break  # a running job's stream: one event is enough
            return response.status_code, bytes(body), kind
        return response.status_code, response.read(), kind
    finally:
        response.close()


def check_answer(status: int, body: bytes, kind: str) -> None:
    assert status < 500, (status, body[:300])
    assert b"Traceback" not in body and b'File "' not in body, body[:300]
    if kind.startswith("text/event-stream"):
        assert status == 200 and body.startswith(b"retry: 2000\n")
        for frame in body.decode("utf-8").split("\n\n")[:-1]:
            for line in frame.split("\n"):
                assert line.startswith(("retry: ", ": ", "id: ", "data: ")), line
    elif status >= 400:
        error = json.loads(body)["error"]
        assert error["code"] in ERROR_CODES and isinstance(error["message"], str)


@pytest.fixture(params=["token", "none"])
def live(
    request: pytest.FixtureRequest, settings: Settings
) -> Iterator[tuple[ServerThread, Settings]]:
    mode = settings.replace(
        auth=request.param,
        secret=SECRET,
        max_streams_per_client=100_000,
        max_body_bytes=128,
        post_rate=0,  # the fuzzer posts thousands of bodies from one address
    )
    runner = FakeRunner(mode)
    try:
        with running_server(mode, {"celery": runner}) as server:
            yield server, mode
    finally:
        runner.close()


def test_fuzzed_requests_never_5xx_never_leak_never_reach_redis_unvalidated(
    live: tuple[ServerThread, Settings], sync_redis: redis.Redis
) -> None:
    server, settings = live
    pub = publisher(settings)
    running, finished = uuid.uuid4().hex, uuid.uuid4().hex
    pub.publish(EventDraft(job_id=running, status=JobStatus.STARTED))
    for status in (JobStatus.STARTED, JobStatus.PROGRESS, JobStatus.SUCCESS):
        pub.publish(EventDraft(job_id=finished, status=status, percent=None))
    pub.redis.close()
    signer = job_signer(settings)
    known = {
        running: signer.mint(running),
        finished: signer.mint(finished),
        "w" + uuid.uuid4().hex: watch_signer(settings).mint("w"),
    }
    statuses: dict[int, int] = {}
    tried = 0

    with (
        Monitor(settings.redis_url) as monitor,
        httpx.Client(base_url=server.url, timeout=10) as client,
    ):

        @fuzz_settings()
        @given(req=requests(known))
        def attempt(req: dict[str, Any]) -> None:
            nonlocal tried
            tried += 1
            status, body, kind = send(client, req)
            statuses[status] = statuses.get(status, 0) + 1
            check_answer(status, body, kind)

        attempt()
    bad = bad_names(monitor.lines, settings.key_prefix)
    keys = [k.decode() for k in sync_redis.scan_iter(f"{settings.key_prefix}:*")]
    bad_keys = bad_names([f'"{k}"' for k in keys], settings.key_prefix)
    report(
        f"fuzz/api-auth-{settings.auth}",
        requests_tried=tried,
        statuses=dict(sorted(statuses.items())),
        redis_commands_audited=len(monitor.lines),
        keys_after=len(keys),
    )
    assert not bad, bad[:20]
    assert not bad_keys, bad_keys
    assert tried >= FUZZ_EXAMPLES // 2


# -- event payloads --------------------------------------------------------------------

TRICKY = [
    "\n",
    "\r",
    "\r\n",
    "\n\n",
    "\u2028",
    "\u0085",
    "\x00",
    "\ud800",
    "\udfff",
    "\ufeff",
    "<script>alert(1)</script>",
    "</textarea>",
    "data: x",
    "id: 99",
    "event: error",
    ": c",
    "retry: 1",
    "🙂",
    '"',
    "\\",
]
payload_text = st.lists(st.sampled_from(TRICKY) | st.text(max_size=5), max_size=12).map("".join)


def test_event_payloads_never_break_sse_framing(settings: Settings) -> None:
    pub = publisher(settings)
    tried = 0
    with (
        running_server(settings) as server,
        httpx.Client(base_url=server.url, timeout=10) as client,
    ):

        @fuzz_settings(max_examples=FUZZ_EXAMPLES // 2)
        @given(message=payload_text, step=payload_text)
        def attempt(message: str, step: str) -> None:
            nonlocal tried
            tried += 1
            job = uuid.uuid4().hex
            pub.publish(EventDraft(job_id=job, status=JobStatus.STARTED))
            pub.publish(
                EventDraft(job_id=job, status=JobStatus.PROGRESS, message=message, step=step)
            )
            pub.publish(EventDraft(job_id=job, status=JobStatus.FAILURE, message=message))
            response = client.get(f"/api/v1/jobs/{job}/events", headers={"Last-Event-ID": "1"})
            raw = response.content
            raw.decode("utf-8")  # valid UTF-8, whatever the text was
            assert b"\r" not in raw
            record = SSEStream(response=response)
            SSEParser(record).feed(raw)
            assert [(e.event, e.id) for e in record.events] == [("message", "2"), ("message", "3")]
            progress = json.loads(record.events[0].data)
            assert (progress["message"], progress["step"]) == (message, step)
            assert json.loads(record.events[1].data)["status"] == "failure"

        attempt()
    pub.redis.close()
    report("fuzz/event-payloads", payloads_tried=tried)


def test_the_page_never_renders_event_text_as_markup() -> None:
    """Event text reaches the DOM as text: no HTML sinks anywhere in the browser code."""
    static = ROOT / "static"
    sinks = re.compile(r"innerHTML|outerHTML|insertAdjacentHTML|document\.write|eval\(")
    for path in static.rglob("*"):
        if path.suffix in {".js", ".html"}:
            assert not sinks.search(path.read_text()), path
