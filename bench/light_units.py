"""A unit function in a module that imports nothing.

The worker start-up row runs it to show a worker's own start-up, without the import of a
heavy module of units (which the worker does before it is ready).
"""


def noop(ctx: object) -> None:
    """Do nothing."""
