"""A small HTTP server that says who it is and who called: the demo's `server` pod.

GET any path → 200 with JSON {pod, namespace, node, podIP, path, client}. `client` is the peer
address as the server sees it, which is how the demo shows where a request came from.
Usage: python3 -m samples.echo [PORT]   (default 8080)
"""

from __future__ import annotations

import json
import os
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

DEFAULT_PORT = 8080


class Handler(BaseHTTPRequestHandler):
    server_version = "ambientmesh-echo/1"

    def do_GET(self) -> None:
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


def main(argv: list[str]) -> int:
    port = int(argv[0]) if argv else DEFAULT_PORT
    server = ThreadingHTTPServer(("0.0.0.0", port), Handler)  # noqa: S104 - a pod's own netns
    print(f"echo: serving on :{port}", flush=True)
    server.serve_forever()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
