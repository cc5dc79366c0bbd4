"""``ptychoscan demo --jitter-nm``: the simulated scan errors draw their jitter with ``--seed`` (they always used seed 0)."""

from __future__ import annotations

import numpy as np

from ptychoscan.cli import build_parser
from ptychoscan.closed_loop import scan_error_args
from ptychoscan.commands.demo import demo_config

NOMINAL = np.stack(np.meshgrid(np.arange(5.0), np.arange(4.0)), axis=-1).reshape(-1, 2) * 0.2


def landed(*argv: str) -> tuple[np.ndarray, list[str]]:
    """Where the demo's microscope lands the beam for ``NOMINAL`` (first list, then a second one), and its sim-detector flags."""
    config = demo_config(build_parser().parse_args(["demo", "--jitter-nm", "0.02", *argv]))
    errors = config.scan_errors
    both = np.concatenate([errors.true_positions(NOMINAL), errors.true_positions(NOMINAL, first_index=len(NOMINAL))])
    return both, scan_error_args(errors)


def test_the_demo_seed_sets_the_scan_errors_seed():
    one, args_one = landed("--seed", "1")
    two, _ = landed("--seed", "2")
    again, _ = landed("--seed", "1")
    assert not np.allclose(one, two)
    np.testing.assert_array_equal(one, again)
    assert args_one[args_one.index("--scan-error-seed") + 1] == "1"  # what the simulated detector is started with


def test_without_a_seed_the_default_specimen_seed_draws_the_scan_errors():
    default, args = landed()
    assert args[args.index("--scan-error-seed") + 1] == "250000"
    assert not np.allclose(default, landed("--seed", "0")[0])
