"""Subcommands of the ``ptychoscan`` CLI, one module each."""
