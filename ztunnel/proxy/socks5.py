"""SOCKS5 CONNECT (RFC 1928), sans-IO: the 15080 test entry point, as ztunnel has one.

Only what the entry needs: no-auth method, CONNECT, IPv4/IPv6 targets (hostnames are refused: the
mesh routes by IP). `feed(bytes)` returns the target once the request is complete; `reply(code)`
is what to send back. Anything else raises Socks5Error with the reply code to send.
"""

from __future__ import annotations

import ipaddress

VERSION = 5
NO_AUTH = 0
CONNECT = 1
ATYP_IPV4, ATYP_DOMAIN, ATYP_IPV6 = 1, 3, 4
SUCCEEDED, GENERAL_FAILURE, NOT_ALLOWED, HOST_UNREACHABLE, REFUSED = 0, 1, 2, 4, 5
COMMAND_NOT_SUPPORTED, ADDRESS_NOT_SUPPORTED = 7, 8
MAX_HANDSHAKE = 512


class Socks5Error(Exception):
    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code


class Socks5Server:
    def __init__(self) -> None:
        self.buffer = bytearray()
        self.greeted = False

    def feed(self, data: bytes) -> tuple[bytes, tuple[str, int] | None]:
        """Returns (bytes to send now, target once known)."""
        self.buffer += data
        if len(self.buffer) > MAX_HANDSHAKE:
            raise Socks5Error(GENERAL_FAILURE, "handshake too long")
        out = b""
        if not self.greeted:
            if len(self.buffer) < 2 or len(self.buffer) < 2 + self.buffer[1]:
                return out, None
            if self.buffer[0] != VERSION or NO_AUTH not in self.buffer[2 : 2 + self.buffer[1]]:
                raise Socks5Error(GENERAL_FAILURE, "need SOCKS5 with no authentication")
            del self.buffer[: 2 + self.buffer[1]]
            self.greeted = True
            out = bytes([VERSION, NO_AUTH])
        return out, self._request()

    def _request(self) -> tuple[str, int] | None:
        b = self.buffer
        if len(b) < 4:
            return None
        if b[0] != VERSION or b[1] != CONNECT:
            raise Socks5Error(COMMAND_NOT_SUPPORTED, "only CONNECT is supported")
        if b[3] == ATYP_IPV4:
            end = 4 + 4
        elif b[3] == ATYP_IPV6:
            end = 4 + 16
        else:
            raise Socks5Error(ADDRESS_NOT_SUPPORTED, "only IP addresses (the mesh routes by IP)")
        if len(b) < end + 2:
            return None
        ip = str(ipaddress.ip_address(bytes(b[4:end])))
        port = int.from_bytes(b[end : end + 2], "big")
        del b[: end + 2]
        return ip, port


def reply(code: int) -> bytes:
    return bytes([VERSION, code, 0, ATYP_IPV4, 0, 0, 0, 0, 0, 0])
