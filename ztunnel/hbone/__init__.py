"""HBONE: HTTP/2 CONNECT tunnels over mTLS. `protocol` is sans-IO (h2 underneath, plus the limits
h2 does not enforce); `connection` is the asyncio edge that owns timeouts and the socket."""
