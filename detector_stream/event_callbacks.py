"""Calling an event handler for each event of a batch: one that raises does not drop the rest."""

from __future__ import annotations

from collections.abc import Callable

from detector_stream.events import Event


def handle_each(events: list[Event], handle: Callable[[Event], None]) -> None:
    """``handle(event)`` for every event in order: one that raises does not drop the rest; the last error is raised after them all."""
    failed: Exception | None = None
    for event in events:
        try:
            handle(event)
        except Exception as err:
            failed = err
    if failed is not None:
        raise failed


def per_event(on_event: Callable[[str, Event], None]) -> Callable[[str, list[Event]], None]:
    """A batch callback that calls ``on_event`` for each event (``handle_each``)."""
    return lambda endpoint, events: handle_each(events, lambda event: on_event(endpoint, event))
