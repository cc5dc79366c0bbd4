"""Nion Swift plug-in: menu items that start and stop an adaptive ptychoscan session on the microscope Nion Swift drives.

Loaded by Nion Swift like every ``nionswift_plugin.*`` package (install the ``nion`` extra);
the extension class registers two menu items under "Ptychoscan". The session's settings
come from the JSON file named by ``PTYCHOSCAN_NION_CONFIG`` (``nion_ptychoscan.driver.DriverConfig``
fields: at least ``service`` and ``api_key``). The driver runs on a thread; after each
chunk the session's latest reconstruction (phase, rad) is shown as the data item
"ptychoscan <session> phase", updated in place on Nion Swift's UI thread.
"""

from __future__ import annotations

import json
import os
import pathlib
import threading
import typing

from nion_ptychoscan.driver import AdaptiveSessionDriver, ChunkRecord, DriverConfig
from nion_ptychoscan.service_client import ServiceClient
from nion_ptychoscan.usim_stack import hardware_from_registry

CONFIG_ENV = "PTYCHOSCAN_NION_CONFIG"


def load_config(path: str | None = None) -> DriverConfig:
    """The driver's settings from ``path`` (default: $PTYCHOSCAN_NION_CONFIG), a JSON object of DriverConfig fields."""
    where = path or os.environ.get(CONFIG_ENV)
    if not where:
        raise ValueError(f"set {CONFIG_ENV} to a JSON file with at least service and api_key")
    return DriverConfig(**json.loads(pathlib.Path(where).read_text()))


class SessionRunner:
    """One driver at a time on a thread; ``show(title, phase)`` receives each new reconstruction (called on the driver's thread)."""

    def __init__(self, show: typing.Callable[[str, typing.Any], None], say: typing.Callable[[str], None] = print) -> None:
        self.show, self.say = show, say
        self.driver: AdaptiveSessionDriver | None = None
        self.thread: threading.Thread | None = None

    def start(self, config: DriverConfig) -> bool:
        """Start a session unless one runs; False if one does."""
        if self.thread is not None and self.thread.is_alive():
            return False
        self.driver = AdaptiveSessionDriver(config, hardware_from_registry(), on_chunk=self._chunk_done, say=self.say)
        self.thread = threading.Thread(target=self._run, name="ptychoscan-nion", daemon=True)
        self.thread.start()
        return True

    def stop(self) -> None:
        if self.driver is not None:
            self.driver.stop()

    def _run(self) -> None:
        try:
            result = self.driver.run()
            self.say(f"ptychoscan: session {result.session_id} {'stopped' if result.stopped else 'done'}, {result.frames} frames")
        except Exception as err:  # the thread's only report is the log line
            self.say(f"ptychoscan: {type(err).__name__}: {err}")

    def _chunk_done(self, record: ChunkRecord, session_id: str) -> None:
        c = self.driver.config
        client = ServiceClient(c.service, c.api_key)
        try:
            recon = client.reconstruction(session_id)
        finally:
            client.close()
        if recon is not None:
            self.show(f"ptychoscan {session_id} phase", recon[0])


class _MenuItem:
    menu_id = "ptychoscan_menu"
    menu_name = "Ptychoscan"
    menu_before_id = "window_menu"

    def __init__(self, name: str, action: typing.Callable[[], None]) -> None:
        self.menu_item_name = name
        self.action = action

    def menu_item_execute(self, window: typing.Any) -> None:
        self.action()


class PtychoscanExtension:
    """Registered by Nion Swift (``extension_id``); adds "Start adaptive scan" and "Stop adaptive scan"."""

    extension_id = "ptychoscan.adaptive_scan"

    def __init__(self, api_broker: typing.Any) -> None:
        self.api = api_broker.get_api(version="1", ui_version="1")
        self.items: dict[str, typing.Any] = {}
        self.runner = SessionRunner(self._show)
        self.menu_refs = [
            self.api.create_menu_item(_MenuItem("Start adaptive scan", self._start)),
            self.api.create_menu_item(_MenuItem("Stop adaptive scan", self.runner.stop)),
        ]

    def _start(self) -> None:
        try:
            started = self.runner.start(load_config())
        except (ValueError, OSError, RuntimeError) as err:
            print(f"ptychoscan: cannot start: {err}")
            return
        if not started:
            print("ptychoscan: a session is already running")

    def _show(self, title: str, phase: typing.Any) -> None:
        def update() -> None:  # data items change on the UI thread only
            item = self.items.get(title)
            if item is None:
                self.items[title] = self.api.library.create_data_item_from_data(phase, title)
            else:
                item.set_data(phase)

        self.api.queue_task(update)

    def close(self) -> None:
        self.runner.stop()
        for ref in self.menu_refs:
            ref.close()
        self.menu_refs = []
