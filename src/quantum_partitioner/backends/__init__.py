"""Backends: how attempts run. Each drives the same scheduler (see ``_base``).

Backends with heavy dependencies are imported only when asked for.
"""

from __future__ import annotations

from ._base import Backend
from ._executor import ExecutorBackend
from ._sequential import SequentialBackend
from ._threads import ThreadBackend

__all__ = ["Backend", "ExecutorBackend", "SequentialBackend", "ThreadBackend"]
