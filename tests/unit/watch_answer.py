"""A watch's streamed answer, as :meth:`kubenova_api.listwatch.ListWatch._follow` reads it
from the client (``_preload_content=False``): its body cut into chunks anywhere, and whether
its connection went back to the pool or was closed."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any


class StreamedAnswer:
    connection = None

    def __init__(self, body: bytes, cut: int) -> None:
        self.chunks = [body[i : i + cut] for i in range(0, len(body), cut)]
        self.closed = self.released = False

    @classmethod
    def of(cls, events: list[dict[str, Any]], cut: int = 7) -> StreamedAnswer:
        """The answer that carries ``events``, one JSON line each."""
        return cls(b"".join(json.dumps(e).encode() + b"\n" for e in events), cut)

    def stream(self, *_: Any, **__: Any) -> Iterator[bytes]:
        yield from self.chunks

    def close(self) -> None:
        self.closed = True

    def release_conn(self) -> None:
        self.released = True
