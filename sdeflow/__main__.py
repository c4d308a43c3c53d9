"""``python -m sdeflow``: the ``sdeflow`` command (see :mod:`sdeflow.cli`)."""

from sdeflow.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
