"""``NativeBatch``: what one drain of the compiled receive loop received, in order (decoded images and raw messages)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

REC = 12
"""int64 fields per message record (``ps_recv_batch`` in recv_batch.c)."""
IMAGE, RAW, LOST = 1, 0, 2
"""Record kinds: decoded image, raw message for the Python decoder, raw message the loop could not keep (out of memory)."""
_DTYPES = {1: np.dtype("uint8"), 2: np.dtype("uint16"), 4: np.dtype("uint32")}


@dataclass
class NativeBatch:
    """The messages of one drain, in order: ``records`` (n, REC) int64, ``received_at`` (n,) s, decoded images in ``arena``,
    raw messages' parts in ``raw`` (lengths ``part_lens``)."""

    records: np.ndarray
    received_at: np.ndarray
    arena: np.ndarray
    raw: bytes
    part_lens: list[int]

    @property
    def arena_misses(self) -> int:
        """Bytes of the largest image that came raw because the arena was full (0: none did): the arena should grow to hold it."""
        r = self.records
        missed = r[(r[:, 0] == RAW) & (r[:, 1] == 1)]
        return int((missed[:, 7] * missed[:, 8] * missed[:, 9]).max()) if len(missed) else 0

    def __len__(self) -> int:
        return len(self.records)

    def items(self) -> Iterator[tuple[int, float, object]]:
        """Per message, in order: ``(IMAGE, received_at, (series, frame, image, (start, stop, real) ns))``,
        ``(RAW, received_at, parts)`` or ``(LOST, received_at, number of parts)``."""
        offsets = np.concatenate(([0], np.cumsum(self.part_lens, dtype=np.int64))).tolist() if self.part_lens else [0]
        arena, raw = self.arena, self.raw
        for rec, at in zip(self.records.tolist(), self.received_at.tolist(), strict=True):
            kind = rec[0]
            if kind == IMAGE:
                image = np.ndarray((rec[7], rec[8]), _DTYPES[rec[9]], buffer=arena, offset=rec[6])
                yield IMAGE, at, (rec[1], rec[2], image, (rec[3], rec[4], rec[5]))
            elif kind == RAW:
                first, count = rec[10], rec[11]
                yield RAW, at, [raw[offsets[k] : offsets[k + 1]] for k in range(first, first + count)]
            else:
                yield LOST, at, rec[11]
