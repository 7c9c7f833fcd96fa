"""Reads as a TLS transport makes them for an asyncio.BufferedProtocol: into the buffers the
receiver lends, as much as each holds."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Protocol, TypeVar

T_co = TypeVar("T_co", covariant=True)


class Lender(Protocol[T_co]):
    def get_buffer(self) -> memoryview: ...
    def buffer_updated(self, nbytes: int) -> Iterable[T_co]: ...


def read_into(receiver: Lender[T_co], chunk: bytes) -> list[T_co]:
    """What `receiver` makes of `chunk`, read into the buffers it lends."""
    out: list[T_co] = []
    view = memoryview(chunk)
    while view:
        buffer = receiver.get_buffer()
        n = min(len(buffer), len(view))
        buffer[:n], view = view[:n], view[n:]
        del buffer  # no view of it left while the receiver takes it back
        out += receiver.buffer_updated(n)
    return out
