"""The ``tradeflow`` command line: one module per command group, wired in :mod:`ops.cli.main`."""
