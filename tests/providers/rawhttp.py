"""A deliberately odd HTTP/1.1 server for the upstream client's edge cases.

``python -m tests.providers.rawhttp MODE`` prints ``listening on http://127.0.0.1:PORT``
and serves until terminated. Standard library only; one thread per connection.

Modes:
``eof``        answers without Content-Length or chunked framing and closes: the body
               is delimited by the close (HTTP/1.0 style).
``once``       answers the first request on a connection (keep-alive, Content-Length);
               a second request on the same connection is met with a close and no
               answer, as when an upstream's keep-alive timeout crosses a request.
``garbage``    answers with bytes that are not HTTP.
``chunks``     a chunked body of many tiny HTTP chunks written in one send.
``unasked``    answers (keep-alive, Content-Length), then, unasked, writes a 408
               response on the idle connection and leaves it open; a further
               request on that connection is never answered.
"""

from __future__ import annotations

import socket
import sys
import threading
import time

BODY = b"hello from the raw server"
CHUNKS = 500


def _read_request(conn: socket.socket, buffer: bytearray) -> bool:
    while b"\r\n\r\n" not in buffer:
        data = conn.recv(65536)
        if not data:
            return False
        buffer += data
    head, _, rest = bytes(buffer).partition(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value.strip())
    while len(rest) < length:
        data = conn.recv(65536)
        if not data:
            return False
        rest += data
    buffer[:] = rest[length:]
    return True


def _serve(conn: socket.socket, mode: str) -> None:
    buffer = bytearray()
    served = 0
    with conn:
        while _read_request(conn, buffer):
            if mode == "eof":
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\n" + BODY)
                return
            if mode == "garbage":
                conn.sendall(b"this is not http at all\r\n\r\n")
                return
            if mode == "unasked":
                if served:
                    time.sleep(30)  # a request on a connection it gave up on: no answer
                    return
                served += 1
                head = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(BODY)
                conn.sendall(head + BODY)
                time.sleep(0.1)
                conn.sendall(b"HTTP/1.1 408 Request Timeout\r\nContent-Length: 0\r\n\r\n")
                continue
            if mode == "once":
                if served:
                    return
                head = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(BODY)
                conn.sendall(head + BODY)
            elif mode == "chunks":
                pieces = b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in _pieces())
                head = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
                conn.sendall(head + pieces + b"0\r\n\r\n")
            served += 1


def _pieces() -> list[bytes]:
    return [b"piece%d;" % i for i in range(CHUNKS)]


def main() -> None:
    mode = sys.argv[1]
    server = socket.create_server(("127.0.0.1", 0))
    print(f"listening on http://127.0.0.1:{server.getsockname()[1]}", flush=True)
    while True:
        conn, _ = server.accept()
        threading.Thread(target=_serve, args=(conn, mode), daemon=True).start()


if __name__ == "__main__":
    main()
