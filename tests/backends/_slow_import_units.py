"""Unit functions in a module that takes a while to import, as a heavy library does.

Worker processes import it by name (this directory is put on ``sys.path``): its import is a
worker's start-up, which must not be billed to the first unit the worker runs.
"""

from __future__ import annotations

import os
import time
from typing import Any

#: How long importing this module takes.
IMPORT_SECONDS = 0.6

time.sleep(IMPORT_SECONDS)


def nap(ctx: Any) -> str:
    """Sleep a little and say who ran."""
    time.sleep(0.05)
    return ctx.unit_id


def die(ctx: Any) -> None:
    """Kill the worker process running this unit."""
    del ctx
    os._exit(3)
