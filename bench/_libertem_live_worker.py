"""Runs in the LiberTEM-live venv (bench/.venvs/libertem-live): one SumUDF acquisition through LiberTEM-live's DECTRIS connection.

Usage: ``python _libertem_live_worker.py JOB.json OUT_DIR``. JOB holds ``api_host``,
``api_port`` (the SIMPLON REST), ``data_host``, ``data_port`` (the ZeroMQ stream to
read: a detector or ``ptychoscan serve --forward``), ``bytes_per_frame``, ``timeout_s``
and ``acquisitions``, run in turn on one connection, each with ``nav_shape`` and
``mode``: ``active`` (LiberTEM-live's controller configures and arms the detector with
the ``controller`` options) or ``passive`` (it waits for someone else to arm).

Talks over stdout, one line each: ``armed SEQUENCE_ID`` once the detector is armed and
LiberTEM-live is ready for data (whoever drives the scan triggers now), then
``done I`` once acquisition I's results are in OUT_DIR/acquisition_I.npz: ``sum``
(SumUDF, sig-shaped) and ``sumsig`` (SumSigUDF, nav-shaped), float64, and ``excluded``
(sig-shaped bool: the pixels LiberTEM-live's corrections exclude, read from the
detector's pixel mask when the controller has ``enable_corrections``).
Imports only the venv's packages, never the project.
"""

from __future__ import annotations

import json
import sys

import numpy as np
from libertem.executor.pipelined import PipelinedExecutor
from libertem.udf.sum import SumUDF
from libertem.udf.sumsigudf import SumSigUDF
from libertem_live.api import Hooks, LiveContext


class SayArmed(Hooks):
    """Tell the driving process the series id once LiberTEM-live has armed the detector."""

    def on_ready_for_data(self, env) -> None:
        print(f"armed {env.aq.acquisition_state.sequence_id}", flush=True)


def main() -> None:
    job = json.loads(open(sys.argv[1]).read())
    out = sys.argv[2]
    executor = PipelinedExecutor(spec=PipelinedExecutor.make_spec(cpus=1, cudas=0), pin_workers=False)
    with LiveContext(executor=executor) as ctx:
        conn = ctx.make_connection("dectris").open(
            api_host=job["api_host"],
            api_port=job["api_port"],
            data_host=job["data_host"],
            data_port=job["data_port"],
            buffer_size=64,
            bytes_per_frame=job["bytes_per_frame"],
            frame_stack_size=4,
        )
        with conn:
            for i, acquisition in enumerate(job["acquisitions"]):
                nav_shape = tuple(acquisition["nav_shape"])
                if acquisition["mode"] == "active":
                    controller = conn.get_active_controller(**acquisition["controller"])
                    aq = ctx.make_acquisition(conn=conn, nav_shape=nav_shape, controller=controller, hooks=SayArmed())
                else:
                    print("waiting", flush=True)
                    pending = conn.wait_for_acquisition(timeout=job["timeout_s"])
                    if pending is None:
                        raise SystemExit(f"nobody armed the detector within {job['timeout_s']} s")
                    print(f"armed {pending.series}", flush=True)
                    aq = ctx.make_acquisition(conn=conn, nav_shape=nav_shape, pending_aq=pending)
                total, per_frame = ctx.run_udf(dataset=aq, udf=[SumUDF(), SumSigUDF()])
                excluded = aq.get_correction_data().get_excluded_pixels()  # from the detector's pixel_mask with enable_corrections
                np.savez(
                    f"{out}/acquisition_{i}.npz",
                    sum=np.asarray(total["intensity"].data, dtype=np.float64),
                    sumsig=np.asarray(per_frame["intensity"].data, dtype=np.float64),
                    excluded=np.zeros(aq.shape.sig, bool) if excluded is None else np.asarray(excluded.todense(), bool),
                )
                print(f"done {i}", flush=True)


if __name__ == "__main__":
    main()
