"""Request bodies sent compressed (Content-Encoding gzip, deflate or br), inflated by the gateway
rather than by aiohttp's parser: never past `max_body_bytes`, in pieces that let the event loop run
between them, and only a few at a time in a worker, so a flood of compression bombs costs a few
bodies' worth of memory rather than one (and aiohttp's buffers) per connection.

The compressed body is read whole first (bounded by `max_body_bytes`, as a plain body is), and
only then does it wait for an inflation slot: a client that sends slowly holds the bytes it sent,
never a slot, nor the many times more its first bytes would inflate to.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import zlib
from collections.abc import AsyncIterator
from types import ModuleType

from aiohttp import web

from gateway.server.errors import (
    PayloadTooLarge,
    RequestTimeout,
    UndecodableBody,
    UnsupportedMediaType,
)

PIECE_BYTES = 64 * 1024  # inflated (and fed) between two turns of the event loop
# Inflated bodies a worker holds at once: 4 at the default 8 MiB `max_body_bytes`, 1 when one
# body alone is past it. More would not inflate faster: they share the worker's one thread.
BUDGET_BYTES = 32 * 1024 * 1024
MAX_SLOTS = 4
MAX_MEMBERS = 1024  # gzip members in one body (aiohttp's bound); clients send one


def _bounded_brotli() -> ModuleType | None:
    """The Brotli module, where its decompressor bounds its output (Brotli or brotlicffi 1.2):
    older ones inflate each piece of input whole, however large it grows."""
    for name in ("brotli", "brotlicffi"):
        try:
            module = importlib.import_module(name)
        except ImportError:
            continue
        if hasattr(module.Decompressor, "can_accept_more_data") and hasattr(module, "error"):
            return module
    return None


BROTLI = _bounded_brotli()
CORRUPT: tuple[type[Exception], ...] = (zlib.error, *((BROTLI.error,) if BROTLI else ()))


class Corrupt(Exception):
    """The body is not the encoding it claims (cut short, or with too many members)."""


def slots_for(max_body_bytes: int) -> int:
    """Concurrent inflations in a worker: as many bodies as fit BUDGET_BYTES, 1 to MAX_SLOTS."""
    return max(1, min(MAX_SLOTS, BUDGET_BYTES // max_body_bytes))


class Inflater:
    """Inflates compressed bodies up to `max_bytes` each, `slots` at a time; the others wait."""

    def __init__(self, *, max_bytes: int, slots: int | None = None) -> None:
        self.max_bytes = max_bytes
        self.slots = slots if slots is not None else slots_for(max_bytes)
        self._free = asyncio.Semaphore(self.slots)
        self.running = 0  # bodies being inflated now
        self.waiting = 0  # bodies read, waiting for a slot

    async def read(self, request: web.Request, encoding: str, *, timeout_s: float) -> bytes:
        """The request's body in `encoding` (gzip, deflate or br), read and inflated within
        `timeout_s`: 413 past `max_bytes` (compressed or not), 400 when it is not `encoding`,
        415 for br where no Brotli that bounds its output is installed. aiohttp's own errors
        (its 413, TimeoutError while the body arrives) are the caller's to map."""
        if encoding == "br" and BROTLI is None:
            raise UnsupportedMediaType(
                "Content-Encoding br needs the Brotli package (1.2 or later) in the gateway; "
                "send gzip or deflate"
            )
        read = False
        try:
            async with asyncio.timeout(timeout_s):
                body = await request.read()  # compressed: client_max_size bounds it
                read = True
                return await self.inflate(body, encoding)
        except TimeoutError:
            if not read:
                raise
            raise RequestTimeout(
                f"request body not inflated within {timeout_s:g} s: all {self.slots} of the "
                "gateway's inflation slots stayed busy"
            ) from None

    async def inflate(self, body: bytes, encoding: str) -> bytes:
        """`body` inflated, once a slot is free."""
        if not body:  # nothing to inflate (aiohttp's parser let it through as it was)
            return body
        async with self.slot():
            out = Output(self.max_bytes)
            try:
                if encoding == "br":
                    await _brotli(memoryview(body), out)
                else:
                    await _zlib(memoryview(body), _wbits(encoding, body[0]), out)
            except (Corrupt, *CORRUPT):
                raise UndecodableBody(
                    f"request body is not valid {encoding}, its Content-Encoding"
                ) from None
            return out.join()

    @contextlib.asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        """One of the `slots`, held for the block; waits as long as none is free."""
        self.waiting += 1
        try:
            await self._free.acquire()
        finally:
            self.waiting -= 1
        self.running += 1
        try:
            yield
        finally:
            self.running -= 1
            self._free.release()


class Output:
    """Inflated pieces, refused (413) as soon as they pass `max_bytes`."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.size = 0
        self.pieces: list[bytes] = []

    @property
    def room(self) -> int:
        """The most the next piece may hold: one byte past the bound tells a body over it."""
        return min(PIECE_BYTES, self.max_bytes + 1 - self.size)

    def add(self, piece: bytes) -> None:
        self.size += len(piece)
        if self.size > self.max_bytes:
            self.pieces.clear()
            raise PayloadTooLarge(f"request body exceeds {self.max_bytes} bytes")
        if piece:
            self.pieces.append(piece)

    def join(self) -> bytes:
        return b"".join(self.pieces)


def _wbits(encoding: str, first: int) -> int:
    """zlib's window bits; deflate without its zlib header (as some clients send it) is read
    raw, as aiohttp's parser reads it."""
    if encoding == "gzip":
        return 16 + zlib.MAX_WBITS
    return zlib.MAX_WBITS if (first & 0xF) == 8 else -zlib.MAX_WBITS


async def _zlib(body: memoryview, wbits: int, out: Output) -> None:
    """Inflate gzip (each of its members) or deflate into `out`, a piece a turn of the loop."""
    d = zlib.decompressobj(wbits)
    members = 1
    for start in range(0, len(body), PIECE_BYTES):
        data: bytes | memoryview = body[start : start + PIECE_BYTES]
        full = False  # the last piece filled its room: zlib may hold more without more input
        while data or full:
            if d.eof:  # what follows a gzip member is another member
                members += 1
                if members > MAX_MEMBERS:
                    raise Corrupt(f"more than {MAX_MEMBERS} members")
                d = zlib.decompressobj(wbits)
            room = out.room
            piece = d.decompress(data, room)
            out.add(piece)
            full = len(piece) == room and not d.eof
            data = d.unused_data if d.eof else d.unconsumed_tail
            await asyncio.sleep(0)
    if not d.eof:
        raise Corrupt("cut short")


async def _brotli(body: memoryview, out: Output) -> None:
    """Inflate br into `out`, a piece a turn of the loop."""
    assert BROTLI is not None
    d = BROTLI.Decompressor()
    process = getattr(d, "process", None) or d.decompress  # Brotli's name, brotlicffi's
    for start in range(0, len(body), PIECE_BYTES):
        # Brotli stops at the first of its output blocks (32 KB, then 64 KB) to reach the room
        # it is given, so its pieces pass the room by a block at most
        piece = process(body[start : start + PIECE_BYTES], out.room)
        out.add(piece)
        await asyncio.sleep(0)
        while piece or not d.can_accept_more_data():  # what it holds back, drained
            piece = process(b"", out.room)
            out.add(piece)
            await asyncio.sleep(0)
    if not d.is_finished():
        raise Corrupt("cut short")
