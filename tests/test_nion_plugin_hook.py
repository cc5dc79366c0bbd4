"""The Nion Swift plug-in hook against a stand-in of Nion's API broker (no UI): menu items, config, the data item."""

from __future__ import annotations

import json

import numpy as np
import pytest

from nionswift_plugin.ptychoscan_adaptive import CONFIG_ENV, PtychoscanExtension, load_config


class _Ref:
    def __init__(self, items, handler):
        self.items, self.handler = items, handler

    def close(self):
        self.items.remove(self.handler)


class _DataItem:
    def __init__(self, data, title):
        self.data, self.title = data, title

    def set_data(self, data):
        self.data = data


class _Api:
    def __init__(self):
        self.menu_items, self.created, self.tasks = [], [], []
        self.library = self

    def get_api(self, version, ui_version):
        return self

    def create_menu_item(self, handler):
        self.menu_items.append(handler)
        return _Ref(self.menu_items, handler)

    def create_data_item_from_data(self, data, title):
        self.created.append(_DataItem(data, title))
        return self.created[-1]

    def queue_task(self, task):
        self.tasks.append(task)


def test_the_extension_adds_start_and_stop_and_shows_each_reconstruction_in_one_data_item():
    api = _Api()
    ext = PtychoscanExtension(api)
    assert [h.menu_item_name for h in api.menu_items] == ["Start adaptive scan", "Stop adaptive scan"]
    assert {h.menu_name for h in api.menu_items} == {"Ptychoscan"}
    ext._show("ptychoscan s1 phase", np.zeros((4, 4)))
    ext._show("ptychoscan s1 phase", np.ones((4, 4)))
    assert len(api.created) == 0 and len(api.tasks) == 2  # nothing touches data items off the UI thread
    for task in api.tasks:
        task()
    assert len(api.created) == 1 and api.created[0].data.sum() == 16
    ext.close()
    assert api.menu_items == []


def test_settings_come_from_the_json_file_the_environment_names(tmp_path, monkeypatch):
    monkeypatch.delenv(CONFIG_ENV, raising=False)
    with pytest.raises(ValueError, match=CONFIG_ENV):
        load_config()
    path = tmp_path / "nion.json"
    path.write_text(json.dumps({"service": "http://127.0.0.1:8000", "api_key": "k", "budget": 100, "chunk": 25}))
    monkeypatch.setenv(CONFIG_ENV, str(path))
    config = load_config()
    assert (config.budget, config.chunk, config.detector_pixels) == (100, 25, 64)
