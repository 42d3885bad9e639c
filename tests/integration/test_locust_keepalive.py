"""Locust's FastHttpUser keeps its connection open past 1,024 open descriptors (loadtests/keepalive.py): a real
HTTP/1.1 server counts the connections a real FastHttpSession opens for several requests."""
from __future__ import annotations

import json
import os
import resource
import socket
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from loadtests.keepalive import socket_is_idle

REPO = Path(__file__).resolve().parents[2]
HIGH_FD = 1100  # past select()'s FD_SETSIZE of 1024

# Locust monkey-patches the whole process on import, so the client runs in a process of its own, as under Locust.
CLIENT = """
import gevent.monkey; gevent.monkey.patch_all()
import json, os, resource, socket, sys
from locust.contrib.fasthttp import FastHttpSession
from locust.event import Events
from loadtests.keepalive import use_poll_for_liveness
url, requests, fds = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, fds + 256)), hard))
held = [os.open(os.devnull, os.O_RDONLY) for _ in range(fds)]
probe = socket.socket(); first_socket_fd = probe.fileno(); probe.close()
use_poll_for_liveness()
session = FastHttpSession(url, Events().request, None)
statuses = [session.get("/ping").status_code for _ in range(requests)]
print(json.dumps({"statuses": statuses, "first_socket_fd": first_socket_fd}))
"""


class _Counting(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as uvicorn answers
    connections = 0

    def setup(self) -> None:
        type(self).connections += 1
        super().setup()

    def do_GET(self) -> None:
        body = b'{"ok": true}'
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *_args) -> None:
        pass


@pytest.fixture
def server():
    _Counting.connections = 0
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Counting)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture
def high_descriptors():
    """Hold enough descriptors open that the next socket's number is past 1,024."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = HIGH_FD + 256
    if soft < wanted:
        if hard != resource.RLIM_INFINITY and hard < wanted:
            pytest.fail(f"this test needs {wanted} open files; the hard limit is {hard}")
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
    held = [os.open(os.devnull, os.O_RDONLY) for _ in range(HIGH_FD)]
    yield
    for fd in held:
        os.close(fd)
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def test_a_locust_session_past_1024_descriptors_reuses_its_connection(server):
    done = subprocess.run([sys.executable, "-c", CLIENT, server, "5", str(HIGH_FD)], cwd=REPO, capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["first_socket_fd"] >= 1024, "the descriptors held did not push the session's socket past 1,024"
    assert result["statuses"] == [200] * 5
    assert _Counting.connections == 1


def test_an_idle_open_socket_is_alive_even_numbered_past_1024(high_descriptors):
    mine, peer = socket.socketpair()
    try:
        assert mine.fileno() >= 1024
        assert socket_is_idle(mine)
    finally:
        mine.close()
        peer.close()


def test_a_socket_with_data_waiting_is_not_reused():
    mine, peer = socket.socketpair()
    try:
        peer.sendall(b"x")
        assert not socket_is_idle(mine)
    finally:
        mine.close()
        peer.close()


def test_a_socket_whose_peer_closed_is_not_reused():
    mine, peer = socket.socketpair()
    peer.close()
    try:
        assert not socket_is_idle(mine)
    finally:
        mine.close()


def test_a_closed_socket_or_none_is_not_reused():
    mine, peer = socket.socketpair()
    mine.close()
    peer.close()
    assert not socket_is_idle(mine)
    assert not socket_is_idle(None)
