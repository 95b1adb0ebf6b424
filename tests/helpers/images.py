"""Image files that tests need and that are costly to make the ordinary way."""

from __future__ import annotations

import struct
import zlib


def bomb_png(width: int = 20000, height: int = 20000) -> bytes:
    """A 69-byte PNG header of ``width x height`` 1-bit pixels: Pillow refuses it on opening
    (a decompression bomb), so no test ever allocates it."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header)
            + chunk(b"IDAT", zlib.compress(bytes(64))) + chunk(b"IEND", b""))  # fmt: skip
