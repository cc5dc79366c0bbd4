"""Run the service in a subprocess for the crash tests: ``python tests/service_server.py STORAGE PORT KEY``.

Same app and uvicorn as ``ptychoscan serve``; the reconstruction is the tests'
recording backend so that a restart test does not depend on reconstruction speed.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import uvicorn
from service_testing import RecordingBackend

from service.app import create_app
from service.settings import ServiceSettings

if __name__ == "__main__":
    storage, port, key = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    settings = ServiceSettings(storage=Path(storage), port=port, api_keys=[key], ask_timeout_s=5.0, flush_interval_s=0.05, resume_told_timeout_s=1.0)
    uvicorn.run(create_app(settings, backend=RecordingBackend(keep_jobs=False)), host="127.0.0.1", port=port, log_level="warning")
