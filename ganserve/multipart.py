"""The wire format of POST /generate: a multipart/mixed stream, one part per image, each with its own headers.

Owns both sides: `part`/`closing` write it (server), MultipartParser reads it incrementally (client). Pure Python,
outside ganserve.serve so that the client imports nothing of the server.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Iterator, Mapping
from dataclasses import dataclass

CRLF = b"\r\n"
_BOUNDARY = re.compile(r'boundary="?([^";]+)"?', re.I)


def new_boundary() -> str:
    return f"ganserve-{secrets.token_hex(12)}"


def content_type(boundary: str) -> str:
    return f"multipart/mixed; boundary={boundary}"


def boundary_of(content_type_header: str) -> str:
    m = _BOUNDARY.search(content_type_header or "")
    if not content_type_header.lower().startswith("multipart/") or not m:
        raise ValueError(f"not a multipart response (Content-Type: {content_type_header!r})")
    return m.group(1)


def part(boundary: str, headers: Mapping[str, str], body: bytes) -> bytes:
    """One part: boundary line, headers (Content-Length always), blank line, body, CRLF."""
    lines = [f"--{boundary}", *(f"{k}: {v}" for k, v in headers.items()), f"Content-Length: {len(body)}", "", ""]
    return CRLF.join(line.encode("latin-1") for line in lines) + body + CRLF


def closing(boundary: str) -> bytes:
    return f"--{boundary}--".encode("latin-1") + CRLF


@dataclass
class Part:
    headers: dict[str, str]  # names lower-cased
    body: bytes


class MultipartParser:
    """Feed bytes as they arrive; get complete parts back. Relies on each part's Content-Length (which we write)."""

    def __init__(self, boundary: str):
        self.delimiter = f"--{boundary}".encode("latin-1")
        self.buffer = bytearray()
        self.done = False
        self._headers: dict[str, str] | None = None

    def feed(self, data: bytes) -> Iterator[Part]:
        self.buffer += data
        while not self.done:
            if self._headers is None:
                end = self.buffer.find(CRLF + CRLF)
                if end < 0:
                    if self.buffer.startswith(self.delimiter + b"--"):
                        self.done = True
                    return
                head = bytes(self.buffer[:end]).decode("latin-1").split("\r\n")
                if head[0] != self.delimiter.decode("latin-1"):
                    raise ValueError(f"malformed multipart stream: expected {self.delimiter!r}, got {head[0][:80]!r}")
                self._headers = {}
                for line in head[1:]:
                    name, _, value = line.partition(":")
                    self._headers[name.strip().lower()] = value.strip()
                if "content-length" not in self._headers:
                    raise ValueError("malformed multipart stream: a part without Content-Length")
                del self.buffer[: end + 4]
            size = int(self._headers["content-length"])
            if len(self.buffer) < size + 2:
                return
            body = bytes(self.buffer[:size])
            del self.buffer[: size + 2]
            headers, self._headers = self._headers, None
            yield Part(headers, body)

    def close(self) -> None:
        """Raise if the stream ended before its closing boundary (a cut connection)."""
        if not self.done and not bytes(self.buffer).startswith(self.delimiter + b"--"):
            raise ValueError("the image stream ended early (connection closed before the last part)")
