"""An HTTP/2 cleartext (prior knowledge) echo server for the demo and tests: every request is
answered `200` with `{"pod", "path", "method", "bytes"}` as JSON and a `grpc-status: 0` trailer.

Usage: python3 -m samples.h2echo PORT
"""

from __future__ import annotations

import asyncio
import json
import os
import sys

import h2.config
import h2.connection
import h2.events
import h2.exceptions


class H2Echo(asyncio.Protocol):
    def __init__(self) -> None:
        self.conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False))
        self.transport: asyncio.Transport | None = None
        self.requests: dict[int, tuple[str, str]] = {}
        self.sizes: dict[int, int] = {}

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.conn.initiate_connection()
        self._flush()

    def data_received(self, data: bytes) -> None:
        try:
            events = self.conn.receive_data(data)
        except h2.exceptions.ProtocolError:
            self._flush()
            if self.transport:
                self.transport.close()
            return
        for event in events:
            if isinstance(event, h2.events.RequestReceived):
                headers = {bytes(k): bytes(v) for k, v in event.headers or []}
                self.requests[event.stream_id] = (
                    headers[b":path"].decode(),
                    headers[b":method"].decode(),
                )
                self.sizes[event.stream_id] = 0
            elif isinstance(event, h2.events.DataReceived) and event.stream_id in self.requests:
                self.sizes[event.stream_id] += len(event.data or b"")
                self.conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
            elif isinstance(event, h2.events.StreamEnded) and event.stream_id in self.requests:
                self._answer(event.stream_id)
        self._flush()

    def _answer(self, sid: int) -> None:
        path, method = self.requests.pop(sid)
        size = self.sizes.pop(sid)
        pod = os.environ.get("POD_NAME", "")
        body = json.dumps({"pod": pod, "path": path, "method": method, "bytes": size}).encode()
        self.conn.send_headers(sid, [(":status", "200"), ("content-type", "application/json")])
        self.conn.send_data(sid, body)
        self.conn.send_headers(sid, [("grpc-status", "0")], end_stream=True)

    def _flush(self) -> None:
        if self.transport is not None and (data := self.conn.data_to_send()):
            self.transport.write(data)


async def serve(port: int) -> None:
    server = await asyncio.get_running_loop().create_server(H2Echo, "0.0.0.0", port)  # noqa: S104
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    asyncio.run(serve(int(sys.argv[1])))
