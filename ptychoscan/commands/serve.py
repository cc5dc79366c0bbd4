"""``ptychoscan serve``: the acquisition service (REST ask/tell, detector ingest, batched reconstruction)."""

from __future__ import annotations

import argparse


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "serve",
        help="run the acquisition service (REST /api/v1, ZeroMQ ingest, HDF5 sessions, /metrics)",
        description="Run the acquisition service. Settings come from PTYCHOSCAN_* environment variables, "
        "then --config, then these flags. Sessions in --storage are resumed at start.",
    )
    p.add_argument("--host", help="interface to bind (default 127.0.0.1)")
    p.add_argument("--port", type=int, help="HTTP port (default 8000)")
    p.add_argument("--storage", help="folder of the session files (default out/sessions)")
    p.add_argument("--api-key", action="append", dest="api_keys", help="accepted API key (repeatable); none: a random key is printed")
    p.add_argument("--detector", action="append", dest="detectors", help="detector stream endpoint tcp://host:port (repeatable)")
    p.add_argument(
        "--forward",
        dest="forward_endpoint",
        metavar="ENDPOINT",
        help="forward every detector message byte for byte on a PUSH socket bound here (tcp://host:port), for LiberTEM-live or another "
        "second consumer; the detectors then stay connected (default: off; without it the service connects to a detector only while a batch is in flight)",
    )
    p.add_argument("--config", help="settings file (YAML/TOML/JSON)")
    p.add_argument("--torch-threads", type=int, help="torch threads of the compute worker (default 2)")
    p.add_argument("--device", help="auto, cpu or cuda")
    p.add_argument("--ask-timeout-s", type=float, help="default long-poll of ask, s")
    p.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import logging
    import secrets
    import sys

    import uvicorn

    from ptychoscan.net import listen_socket
    from recon.device import pick_device
    from service.app import create_app
    from service.settings import load_settings

    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    settings = load_settings(
        args.config,
        host=args.host,
        port=args.port,
        storage=args.storage,
        api_keys=args.api_keys,
        detectors=args.detectors,
        forward_endpoint=args.forward_endpoint,
        torch_threads=args.torch_threads,
        device=args.device,
        ask_timeout_s=args.ask_timeout_s,
    )
    if settings.storage.exists() and not settings.storage.is_dir():
        raise ValueError(f"--storage {settings.storage}: exists and is not a folder (session files go into a folder)")
    pick_device(settings.device)  # DeviceError (one line) for a device this machine does not have, before anything starts
    sock = listen_socket(settings.host, settings.port)
    if not settings.api_keys:
        key = secrets.token_urlsafe(24)
        settings.api_keys = [key]
        print(f"no API key given; this run accepts: {key}", file=sys.stderr, flush=True)
    import torch

    torch.set_num_threads(settings.torch_threads)
    app = create_app(settings)
    config = uvicorn.Config(app, host=settings.host, port=settings.port, log_level=args.log_level, timeout_graceful_shutdown=5)  # long-polling asks are cut after 5 s; the chunk in flight is finished in the lifespan
    server = uvicorn.Server(config)
    with sock:
        server.run(sockets=[sock])
    if not server.started:
        raise ValueError("the service did not start (see the log above)")
    return 0
