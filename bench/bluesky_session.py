"""What driving a session from bluesky costs: a RunEngine (``ptychoscan_bluesky``) against the control loop ``sim-scan`` runs, same stack.

Starts ``ptychoscan serve`` (torch reconstruction) and ``ptychoscan sim-detector`` as
processes, then runs sessions alternately with bluesky-adaptive's ``optimize``
(``session_plan``: per position a beam move, a trigger and a read, one series per batch)
and with ``sim_microscope.control_loop.run_scan`` (per batch one position list and one
trigger), and prints per run the wall time, this process's CPU time and the time spent in
``ask`` (waiting for the service's decisions); the rest is the microscope side.

    python bench/bluesky_session.py [--budget 100 --chunk 25 --strategy structure-guided --specimen mos2 --repeats 2]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch
from bluesky import RunEngine

from ptychoscan.client import Client
from ptychoscan_bluesky import PtychoscanAgent, ScanBeam, SimplonDetector, session_plan
from sim_microscope.control_loop import ScanLoopConfig, run_scan
from tests.live_stack import LiveStack

KEY = "bench-key"


class TimedClient(Client):
    """A client that adds up the wall time its ``ask`` calls take, s."""

    ask_s = 0.0

    def ask(self, *args, **kwargs):
        t0 = time.perf_counter()
        try:
            return super().ask(*args, **kwargs)
        finally:
            self.ask_s += time.perf_counter() - t0


def run_bluesky(stack: LiveStack, body: dict) -> tuple[float, float, float, str]:
    beam, det = ScanBeam(stack.microscope, name="beam"), SimplonDetector(stack.microscope, name="det")
    RE = RunEngine({}, context_managers=[])
    with TimedClient(stack.url, api_key=KEY) as client:
        t0, c0 = time.perf_counter(), time.process_time()
        agent = PtychoscanAgent.start(client, {**body, "detector_bit_depth": det.bit_depth_image.get()}, poll_s=10.0)
        RE(session_plan(agent, beam, det))
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
        state = client.session(agent.session_id).state
        ask_s = client.ask_s
    beam.close()
    det.close()
    return wall, cpu, ask_s, state


def run_loop(stack: LiveStack, body: dict) -> tuple[float, float, float, str]:
    config = ScanLoopConfig(service=stack.url, microscope=stack.microscope, api_key=KEY, detector_endpoint=body["detector_endpoint"],
                            fov_nm=tuple(body["fov_nm"]), budget=body["budget"], chunk=body["chunk"], strategy=body["strategy"],
                            detector_pixels=body["detector_pixels"], ask_timeout_s=10.0)
    t0, c0 = time.perf_counter(), time.process_time()
    result = run_scan(config, progress=False)
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    with Client(stack.url, api_key=KEY) as client:
        state = client.session(result["session_id"]).state
    return wall, cpu, float("nan"), state


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--budget", type=int, default=100)
    p.add_argument("--chunk", type=int, default=25)
    p.add_argument("--strategy", default="structure-guided")
    p.add_argument("--specimen", default="mos2")
    p.add_argument("--detector-pixels", type=int, default=64)
    p.add_argument("--repeats", type=int, default=2)
    args = p.parse_args(argv)
    torch.set_num_threads(1)  # this process only talks HTTP; the service process sets its own
    with tempfile.TemporaryDirectory() as tmp, LiveStack(Path(tmp), KEY, real_reconstruction=True, specimen=args.specimen,
                                                         detector_pixels=args.detector_pixels, frame_time_s=0.001) as stack:
        body = {"detector_endpoint": f"tcp://127.0.0.1:{stack.zmq_port}", "fov_nm": [0.0, 0.0, 2.0, 2.0], "budget": args.budget,
                "chunk": args.chunk, "strategy": args.strategy, "detector_pixels": args.detector_pixels}
        print(f"budget {args.budget}, chunk {args.chunk}, {args.strategy}, {args.specimen} K={args.detector_pixels}")
        print("| run | driver | wall s | client CPU s | in ask s | microscope side s | per position ms | state |")
        print("|---|---|---|---|---|---|---|---|")
        for r in range(args.repeats):
            for name, fn in (("bluesky", run_bluesky), ("sim-scan loop", run_loop)):
                wall, cpu, ask_s, state = fn(stack, body)
                side = wall - ask_s if ask_s == ask_s else float("nan")
                print(f"| {r + 1} | {name} | {wall:.1f} | {cpu:.2f} | {ask_s:.1f} | {side:.1f} | {1000 * side / args.budget:.0f} | {state} |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
