"""Run inside a pod: for each ip:port, what a client gets — `refused`, `cut` (reset, closed or
dropped: no answer) or `reply <status line>` — as a JSON object (RELIABILITY C-6)."""

from __future__ import annotations

import json
import socket
import sys


def knock(ip: str, port: int) -> str:
    try:
        sock = socket.create_connection((ip, port), timeout=2)
    except ConnectionRefusedError:
        return "refused"
    except OSError:
        return "cut"  # reset during the handshake, or dropped (timeout)
    with sock:
        try:
            sock.sendall(b"GET /metrics HTTP/1.0\r\nHost: x\r\n\r\n")
            data = sock.recv(200)
        except OSError:
            return "cut"
    return "reply " + data.split(b"\r\n")[0].decode(errors="replace") if data else "cut"


if __name__ == "__main__":
    targets = [t.rsplit(":", 1) for t in sys.argv[1:]]
    print(json.dumps({f"{ip}:{port}": knock(ip, int(port)) for ip, port in targets}))
