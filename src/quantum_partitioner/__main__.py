"""``python -m quantum_partitioner``: the same command as ``quantum-partitioner``."""

from __future__ import annotations

from .cli import main

if __name__ == "__main__":
    raise SystemExit(main())
