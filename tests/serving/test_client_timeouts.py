"""The gateway client gives up on an address that does not answer within the connect timeout,
and still waits the (longer) read timeout for a slow answer (issue 14, defect 11)."""

from __future__ import annotations

import socket
import threading
import time

import pytest

from serving.client import GatewayClient, GatewayUnavailable


def test_a_connect_that_never_completes_gives_up_at_the_connect_timeout():
    # A listener whose accept queue is full drops further SYNs: connect() hangs, as it does
    # for an address behind a firewall that drops packets.
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(0)
    port = server.getsockname()[1]
    fillers = []
    for _ in range(8):
        s = socket.socket()
        s.setblocking(False)
        try:
            s.connect(("127.0.0.1", port))
        except BlockingIOError:
            pass
        fillers.append(s)
    time.sleep(0.2)
    client = GatewayClient(f"http://127.0.0.1:{port}", timeout_s=8, connect_timeout_s=1)
    start = time.monotonic()
    try:
        with pytest.raises(GatewayUnavailable, match="timed out"):
            client.health()
        assert time.monotonic() - start < 4
    finally:
        for s in fillers:
            s.close()
        server.close()


def test_a_slow_answer_is_waited_for_up_to_the_read_timeout():
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(4)
    port = server.getsockname()[1]

    def answer_slowly():
        conn, _ = server.accept()
        with conn:
            conn.recv(65536)
            time.sleep(1.5)
            body = b'{"ok": true}'
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                         b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)

    thread = threading.Thread(target=answer_slowly)
    thread.start()
    try:
        client = GatewayClient(f"http://127.0.0.1:{port}", timeout_s=10, connect_timeout_s=0.5)
        assert client.health() == {"ok": True}
    finally:
        thread.join(5)
        server.close()


def test_a_closed_port_fails_at_once():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    start = time.monotonic()
    with pytest.raises(GatewayUnavailable):
        GatewayClient(f"http://127.0.0.1:{port}").health()
    assert time.monotonic() - start < 2
