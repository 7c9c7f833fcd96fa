"""Run inside a pod: for each ip:port, what a client gets — `refused`, `timeout` (dropped: no
answer at all), `reset`, `closed` (a clean end, no bytes) or `reply <status line>` — as a JSON
object (RELIABILITY C-6)."""

from __future__ import annotations

import json
import socket
import sys


def knock(ip: str, port: int) -> str:
    try:
        with socket.create_connection((ip, port), timeout=2) as sock:
            sock.sendall(b"GET /metrics HTTP/1.0\r\nHost: x\r\n\r\n")
            data = sock.recv(200)
    except ConnectionRefusedError:
        return "refused"
    except ConnectionResetError:
        return "reset"
    except TimeoutError:
        return "timeout"
    except OSError as exc:
        return f"error {exc.errno}"
    return "reply " + data.split(b"\r\n")[0].decode(errors="replace") if data else "closed"


if __name__ == "__main__":
    targets = [t.rsplit(":", 1) for t in sys.argv[1:]]
    print(json.dumps({f"{ip}:{port}": knock(ip, int(port)) for ip, port in targets}))
