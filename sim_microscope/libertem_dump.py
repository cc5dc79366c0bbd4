"""Write stream v1 messages as a libertem-dectris dump file, which its ``DectrisSim(uri, filename)`` replays.

Format: every ZeroMQ part in order, each as a little-endian int64 length then the
bytes. Used to compare our sender with libertem-dectris's Rust sender on the same
frames, and to check that its parser accepts our messages.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable
from pathlib import Path


def write_dump(path: str | Path, messages: Iterable[list[bytes]]) -> Path:
    """Write ``messages`` (lists of parts: series start, images; dseries_end is sent by DectrisSim itself)."""
    path = Path(path)
    with open(path, "wb") as f:
        for parts in messages:
            for part in parts:
                f.write(struct.pack("<q", len(part)))
                f.write(part)
    return path
