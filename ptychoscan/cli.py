"""The ``ptychoscan`` command line: one entry point, one module per subcommand.

Each module in ``COMMAND_MODULES`` has ``register(subparsers)``, which adds its
subcommand and sets ``func`` to a handler taking the parsed arguments. Handlers import
their heavy dependencies lazily so that ``ptychoscan --help`` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import sys

COMMAND_MODULES = (
    "ptychoscan.commands.simulate",
    "ptychoscan.commands.demo",
    "ptychoscan.commands.serve",
    "ptychoscan.commands.sim_detector",
    "ptychoscan.commands.sim_scan",
    "ptychoscan.commands.reconstruct",
    "ptychoscan.commands.train",
    "ptychoscan.commands.evaluate",
)


class DefaultsHelpFormatter(argparse.HelpFormatter):
    """Help that shows each option's default, unless it is None or False (resolved elsewhere) or the help text names it already."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if not action.option_strings or action.default in (None, False, argparse.SUPPRESS) or "default" in text.lower():
            return text
        return f"{text} (default: %(default)s)".lstrip()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ptychoscan",
        description="Adaptive scanning for electron ptychography: simulate, reconstruct, train, evaluate, serve.",
    )
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(subparsers)
    for sub in subparsers.choices.values():
        sub.formatter_class = DefaultsHelpFormatter
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; returns the process exit code (2 for bad input, 130 on Ctrl-C)."""
    from ptychoscan.config import ConfigError
    from recon.dataset import DatasetError

    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("interrupted: outputs written so far are complete; the one in progress was discarded", file=sys.stderr)
        return 130
    except (DatasetError, ConfigError, ValueError, OSError) as err:  # OSError: a path or port the user gave (FileNotFoundError, IsADirectoryError, ...)
        print(f"error: {' '.join(str(err).split())}", file=sys.stderr)  # one line, whatever the message
        return 2


if __name__ == "__main__":
    sys.exit(main())
