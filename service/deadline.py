"""Incremental updates that fit the microscope's pace: shrink a round's update when the compute worker cannot keep up.

The scan waits for every decision, so a chunk's reconstruction should take a fraction
of the time the microscope spends acquiring a chunk. With many concurrent sessions on a
small CPU the default incremental update (``ChunkUpdate``: ``update_iterations``
passes over the new positions plus ``replay`` times as many older ones) does not fit.
``UpdateDeadline`` then steps it down a ladder of cheaper updates, fewer replayed
positions first, then fewer passes, down to one pass over the new positions alone, so
that the round's expected time is at most ``fraction`` x the shortest acquisition time
among the round's chunks. A session's first chunk (reconstructed from zero) gets the
level's passes instead of the full count when the round is shrunk; its last chunk's
full reconstruction is never shrunk: the final reconstruction is the same whatever the
load.

The cost model is measured, not configured: seconds per position-pass (one position
through one forward and backward pass), an exponential average over the backend's
calls on this machine under its real load. Until the first call has been timed no
update is shrunk.
"""

from __future__ import annotations

from collections.abc import Sequence

Level = tuple[int, float]
"""(passes, replayed older positions per new position) of an incremental update."""


class UpdateDeadline:
    """Chooses one update level per round so that the round fits ``fraction`` x the chunks' acquisition time.

    Args:
        update_iterations: passes of the full-size incremental update (the top of the ladder).
        replay: its replayed older positions per new position.
        fraction: the round's reconstruction time budget as a fraction of the shortest
            chunk acquisition time (s) in the round; None: never shrink.
        smoothing: weight of the newest call in the average cost per position-pass.
    """

    def __init__(self, update_iterations: int, replay: float, fraction: float | None, smoothing: float = 0.3) -> None:
        if fraction is not None and not fraction > 0:
            raise ValueError(f"deadline fraction must be > 0, got {fraction}")
        self.fraction = fraction
        self.smoothing = smoothing
        self.seconds_per_pass: float | None = None
        """Measured cost of one position through one pass (s), None until a call was timed."""
        self.ladder = _ladder(update_iterations, replay)

    def choose(
        self,
        n_new: Sequence[int],
        n_older: Sequence[int],
        acquisition_s: Sequence[float | None],
        fixed_passes: int = 0,
        fresh: Sequence[int] = (),
        fresh_passes: int = 1,
        cost_scale: float = 1.0,
    ) -> Level:
        """The costliest level whose round fits the budget (the cheapest one when none does).

        Args:
            n_new, n_older: per incremental job, its new and its older positions.
            acquisition_s: per job that a decision waits on, the time its chunk took to acquire (s), None if unknown.
            fixed_passes: position-passes of the round's full reconstructions (not shrinkable).
            fresh: positions of each first-chunk job (reconstructed from zero): ``fresh_passes``
                passes at the top level, the level's passes below it.
            cost_scale: cost of these jobs' position-passes relative to the model's unit
                (the backend keeps it per pass of 64x64 patterns).
        """
        known = [t for t in acquisition_s if t is not None]
        if self.fraction is None or self.seconds_per_pass is None or not known:
            return self.ladder[0]
        budget_s = self.fraction * min(known)
        for level in self.ladder:
            passes = fixed_passes + sum(position_passes(level, new, old) for new, old in zip(n_new, n_older, strict=True))
            passes += sum(fresh) * (fresh_passes if level == self.ladder[0] else level[0])
            if passes * self.seconds_per_pass * cost_scale <= budget_s:
                return level
        return self.ladder[-1]

    def observe(self, seconds: float, passes: int) -> None:
        """Fold one timed call (wall seconds for ``passes`` position-passes) into the cost model."""
        if passes <= 0 or not seconds > 0:
            return
        cost = seconds / passes
        if self.seconds_per_pass is None:
            self.seconds_per_pass = cost
        else:
            self.seconds_per_pass += self.smoothing * (cost - self.seconds_per_pass)


def replayed(level: Level, n_new: int, n_older: int) -> int:
    """Older positions an update at ``level`` revisits."""
    return min(n_older, round(level[1] * n_new))


def position_passes(level: Level, n_new: int, n_older: int) -> int:
    """Position-passes of one incremental update at ``level``."""
    return level[0] * (n_new + replayed(level, n_new, n_older))


def _ladder(update_iterations: int, replay: float) -> list[Level]:
    """Levels from the configured update down to one pass over the new positions, costliest first."""
    levels = {(passes, r) for passes in range(update_iterations, 0, -1) for r in (replay, replay / 2, 0.0)}
    return sorted(levels, key=lambda lv: (-lv[0] * (1 + lv[1]), -lv[1]))
