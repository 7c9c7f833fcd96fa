"""A small HTTP server that says who it is and who called: the demo's `server` pod.

GET any path → 200 with JSON {pod, namespace, node, podIP, path, client}. `client` is the peer
address as the server sees it, which is how the demo shows where a request came from.
A WebSocket handshake (`Upgrade: websocket`) → 101, then every byte is echoed as it came: the
frames are not parsed (the mesh never looks inside them either, which is what this shows).
Usage: python3 -m samples.echo [PORT]   (default 8080)
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

DEFAULT_PORT = 8080
WEBSOCKET_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"  # RFC 6455 §1.3


class Handler(BaseHTTPRequestHandler):
    server_version = "ambientmesh-echo/1"

    def do_GET(self) -> None:
        if self.headers.get("Upgrade", "").lower() == "websocket":
            self._websocket()
            return
        body = (
            json.dumps(
                {
                    "pod": os.environ.get("POD_NAME", ""),
                    "namespace": os.environ.get("POD_NAMESPACE", ""),
                    "node": os.environ.get("NODE_NAME", ""),
                    "podIP": os.environ.get("POD_IP", ""),
                    "path": self.path,
                    "client": f"{self.client_address[0]}:{self.client_address[1]}",
                }
            ).encode()
            + b"\n"
        )
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _websocket(self) -> None:
        key = self.headers.get("Sec-WebSocket-Key", "").encode()
        accept = base64.b64encode(hashlib.sha1(key + WEBSOCKET_GUID).digest()).decode()  # noqa: S324 - RFC 6455
        self.send_response(101)
        self.send_header("Upgrade", "websocket")
        self.send_header("Connection", "Upgrade")
        self.send_header("Sec-WebSocket-Accept", accept)
        self.end_headers()
        self.wfile.flush()
        while data := self.rfile.read1(65536):
            self.wfile.write(data)
            self.wfile.flush()
        self.close_connection = True


def main(argv: list[str]) -> int:
    port = int(argv[0]) if argv else DEFAULT_PORT
    server = ThreadingHTTPServer(("0.0.0.0", port), Handler)  # noqa: S104 - a pod's own netns
    print(f"echo: serving on :{port}", flush=True)
    server.serve_forever()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
