"""Attacks on the server's edge, run in their own process so that the test's measuring
loop shares no interpreter with them: `python -m tests.support.edge_attacks KIND PORT ...`.

- `header PORT SECONDS CLIENTS MB`: CLIENTS threads, each sending one request whose
  header grows toward MB megabytes, over and over until SECONDS pass (a refused
  connection is opened again at once);
- `halfopen PORT SECONDS CONNECTIONS`: CONNECTIONS sockets that send half a request line
  and nothing more; each is watched until the server closes it or SECONDS pass.

Prints one JSON line of what it saw. Bounded in time, loopback only, at nice 19.
"""

from __future__ import annotations

import json
import os
import selectors
import socket
import sys
import threading
import time
from typing import Any

CHUNK = b"a" * 65536


def grow_one_header(port: int, deadline: float, megabytes: int) -> tuple[int, bytes]:
    """One request with an ever longer header: bytes the server took, what it answered."""
    sent = 0
    with socket.socket() as sock:
        # A small send buffer, as a client across a network has: the kernel takes little
        # more than the server reads before its refusal arrives.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 16384)
        sock.settimeout(2)
        sock.connect(("127.0.0.1", port))
        try:
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: ")
            while sent < megabytes << 20 and time.monotonic() < deadline:
                sock.sendall(CHUNK)
                sent += len(CHUNK)
            sock.sendall(b"\r\n\r\n")
        except OSError:
            pass  # refused: the server closed the connection under us
        try:
            answer = sock.recv(200)
        except OSError:
            answer = b""
    return sent, answer


def header_attack(port: int, seconds: float, clients: int, megabytes: int) -> dict[str, Any]:
    deadline = time.monotonic() + seconds
    seen: list[tuple[int, bytes]] = []

    def attacker() -> None:
        while time.monotonic() < deadline:
            try:
                seen.append(grow_one_header(port, deadline, megabytes))
            except OSError:
                time.sleep(0.01)  # could not connect (refused or over the cap): again

    threads = [threading.Thread(target=attacker) for _ in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return {
        "requests": len(seen),
        "answered_431": sum(answer.startswith(b"HTTP/1.1 431") for _, answer in seen),
        "closed_without_answer": sum(answer == b"" for _, answer in seen),
        "max_mb_sent_in_one": round(max((sent for sent, _ in seen), default=0) / 2**20, 1),
    }


def halfopen_attack(port: int, seconds: float, connections: int) -> dict[str, Any]:
    started = time.monotonic()
    opened: dict[socket.socket, float] = {}
    failed = 0
    for _ in range(connections):
        try:
            sock = socket.create_connection(("127.0.0.1", port), timeout=2)
            sock.sendall(b"GET /healthz HT")
            opened[sock] = time.monotonic()
        except OSError:
            failed += 1
    print(json.dumps({"opened": len(opened), "failed": failed}), flush=True)
    closed_after: list[float] = []
    answers: dict[str, int] = {}
    deadline = started + seconds
    watch = selectors.DefaultSelector()  # epoll: fds past 1,024
    for sock in opened:
        watch.register(sock, selectors.EVENT_READ)
    while opened and time.monotonic() < deadline:
        for key, _ in watch.select(0.05):
            sock = key.fileobj
            assert isinstance(sock, socket.socket)
            watch.unregister(sock)
            try:
                data = sock.recv(4096)
            except OSError:
                data = b""
            status = data[9:12].decode() if data.startswith(b"HTTP/1.1 ") else "none"
            answers[status] = answers.get(status, 0) + 1
            closed_after.append(time.monotonic() - opened.pop(sock))
            sock.close()
    for sock in opened:
        sock.close()
    closed_after.sort()
    return {
        "opened": len(opened) + len(closed_after),
        "failed": failed,
        "closed_by_server": len(closed_after),
        "still_open": len(opened),
        "answers": answers,
        "closed_after_s": {
            "min": round(closed_after[0], 2) if closed_after else None,
            "max": round(closed_after[-1], 2) if closed_after else None,
        },
    }


def main(argv: list[str]) -> None:
    # An attacker is another machine: at the lowest priority here, it takes the CPU the
    # server and the measuring clients leave, so the figures show the server's own cost.
    os.nice(19)
    kind, port, seconds, *rest = argv
    if kind == "header":
        clients, megabytes = (int(x) for x in rest)
        result = header_attack(int(port), float(seconds), clients, megabytes)
    elif kind == "halfopen":
        result = halfopen_attack(int(port), float(seconds), int(rest[0]))
    else:
        raise SystemExit(f"unknown attack {kind!r}")
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
