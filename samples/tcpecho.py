"""A TCP echo server, and a client that streams numbered messages and checks every echo.

  python3 -m samples.tcpecho serve PORT
  python3 -m samples.tcpecho stream HOST PORT SECONDS [INTERVAL_MS]
The client prints `OK <n> messages` and exits 0 only if every message came back intact and the
connection never broke: the probe for "a restart interrupts nothing".
"""

from __future__ import annotations

import socket
import sys
import threading
import time


def serve(port: int) -> None:
    listener = socket.create_server(("0.0.0.0", port), reuse_port=True)  # noqa: S104 - pod netns
    while True:
        conn, _ = listener.accept()
        threading.Thread(target=_echo, args=(conn,), daemon=True).start()


def _echo(conn: socket.socket) -> None:
    with conn:
        while data := conn.recv(65536):
            conn.sendall(data)


def stream(host: str, port: int, seconds: float, interval_ms: float) -> int:
    sent = 0
    try:
        with socket.create_connection((host, port), timeout=5) as conn:
            reader = conn.makefile("rb")
            end = time.monotonic() + seconds
            while time.monotonic() < end:
                line = f"message {sent}\n".encode()
                conn.sendall(line)
                if reader.readline() != line:
                    print(f"FAIL echo mismatch at {sent}")
                    return 1
                sent += 1
                time.sleep(interval_ms / 1000)
    except OSError as exc:
        print(f"FAIL after {sent} messages: {exc}")
        return 1
    print(f"OK {sent} messages")
    return 0


def main(argv: list[str]) -> int:
    if argv[:1] == ["serve"]:
        serve(int(argv[1]))
        return 0
    if argv[:1] == ["stream"]:
        interval = float(argv[4]) if len(argv) > 4 else 5.0
        return stream(argv[1], int(argv[2]), float(argv[3]), interval)
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
