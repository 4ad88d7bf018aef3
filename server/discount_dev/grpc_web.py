"""gRPC-Web's framing over plain HTTP/1.1, as a browser (or curl) sends and reads it.

A body is a series of frames: a flag byte (0x80 marks the trailers), a big-endian 4-byte length,
then the payload (a protobuf message, or the trailers as `name: value` lines).
"""

from __future__ import annotations

import struct

from google.protobuf.message import Message

__all__ = ["frame", "parse_frames"]


def frame(message: Message) -> bytes:
    """One request message as a gRPC-Web data frame."""
    body = message.SerializeToString()
    return b"\x00" + struct.pack(">I", len(body)) + body


def parse_frames(data: bytes) -> tuple[list[bytes], dict[str, str]]:
    """A response body split into its messages and its trailers (names lower-cased)."""
    messages: list[bytes] = []
    trailers: dict[str, str] = {}
    offset = 0
    while offset + 5 <= len(data):
        flags, length = data[offset], struct.unpack(">I", data[offset + 1 : offset + 5])[0]
        payload = data[offset + 5 : offset + 5 + length]
        offset += 5 + length
        if flags & 0x80:
            for line in payload.decode().split("\r\n"):
                if ":" in line:
                    name, _, value = line.partition(":")
                    trailers[name.strip().lower()] = value.strip()
        else:
            messages.append(payload)
    return messages, trailers
