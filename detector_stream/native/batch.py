"""``NativeBatch``: what one drain of the compiled receive loop received, in order (decoded images and raw messages)."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

REC = 13
"""int64 fields per message record (``ps_recv_batch`` in recv_batch.c)."""
IMAGE, RAW, LOST = 1, 0, 2
"""Record kinds: decoded image, raw message for the Python decoder, raw message the loop could not keep (out of memory)."""
RUN = 3
"""Item kind of ``NativeBatch.items``: decoded images of consecutive frames of one series, back to back in the arena."""
_DTYPES = {1: np.dtype("uint8"), 2: np.dtype("uint16"), 4: np.dtype("uint32")}


@dataclass
class NativeBatch:
    """The messages of one drain, in order: ``records`` (n, REC) int64, ``received_at`` (n,) s, decoded images in ``arena``,
    raw messages' parts in ``raw`` (lengths ``part_lens``), the decoded images' compressed blobs in ``blobs``;
    ``arena_misses``: bytes of the largest image that came raw because the arena was full (0: none did), the arena should
    grow to hold it (counted by the loop: ``ps_arena_miss``)."""

    records: np.ndarray
    received_at: np.ndarray
    arena: np.ndarray
    raw: bytes
    part_lens: list[int]
    blobs: bytes = b""
    arena_misses: int = 0

    def __len__(self) -> int:
        return len(self.records)

    def items(self) -> Iterator[tuple[int, object, object]]:
        """Per message, in order: ``(RAW, received_at, parts)``, ``(LOST, received_at, number of parts)``,
        ``(IMAGE, received_at, (series, frame, image, (start, stop, real) ns, blob, marked))``; and for two or more images of
        consecutive frames of one series and shape that lie back to back in the arena, one
        ``(RUN, [received_at, ...], (series, first frame, (n, y, x) stack, [(start, stop, real), ...], [blob, ...], [marked, ...]))``.
        A blob is the bitshuffle-LZ4 message part the image was decoded from (a memoryview into ``blobs``), None if the
        loop could not keep it; ``marked``: how many of its pixels are their type's largest value (``Frame.marked``)."""
        r = self.records
        n = len(r)
        offsets = np.concatenate(([0], np.cumsum(self.part_lens, dtype=np.int64))).tolist() if self.part_lens else [0]
        follows = np.zeros(n, bool)  # record j continues the run of record j - 1
        if n > 1:
            a, b = r[:-1], r[1:]
            follows[1:] = (
                (a[:, 0] == IMAGE) & (b[:, 0] == IMAGE) & (b[:, 1] == a[:, 1]) & (b[:, 2] == a[:, 2] + 1)
                & (b[:, 7:10] == a[:, 7:10]).all(axis=1) & (b[:, 6] == a[:, 6] + a[:, 7] * a[:, 8] * a[:, 9])
            )
        starts = [*np.flatnonzero(~follows).tolist(), n]
        records, stamps, arena, raw = r.tolist(), self.received_at.tolist(), self.arena, self.raw
        blobs = memoryview(self.blobs)
        for lo, hi in itertools.pairwise(starts):
            rec = records[lo]
            kind = rec[0]
            if hi - lo > 1:
                stack = np.ndarray((hi - lo, rec[7], rec[8]), _DTYPES[rec[9]], buffer=arena, offset=rec[6])
                run = records[lo:hi]
                kept = [blobs[q[10] : q[10] + q[11]] if q[11] else None for q in run]
                yield RUN, stamps[lo:hi], (rec[1], rec[2], stack, [(q[3], q[4], q[5]) for q in run], kept, [q[12] for q in run])
            elif kind == IMAGE:
                image = np.ndarray((rec[7], rec[8]), _DTYPES[rec[9]], buffer=arena, offset=rec[6])
                blob = blobs[rec[10] : rec[10] + rec[11]] if rec[11] else None
                yield IMAGE, stamps[lo], (rec[1], rec[2], image, (rec[3], rec[4], rec[5]), blob, rec[12])
            elif kind == RAW:
                first, count = rec[10], rec[11]
                yield RAW, stamps[lo], [raw[offsets[k] : offsets[k + 1]] for k in range(first, first + count)]
            else:
                yield LOST, stamps[lo], rec[11]
