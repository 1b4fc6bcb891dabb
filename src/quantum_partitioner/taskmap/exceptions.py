"""The TaskMap engine's exceptions, where code written for the original API imports them.

``from quantum_partitioner.taskmap.exceptions import TaskError, CircularDependency`` gives the
package's own classes, the ones :mod:`quantum_partitioner.taskmap` and
:mod:`quantum_partitioner` export.
"""

from __future__ import annotations

from .._errors import CircularDependency, CircularDependencyError, TaskError

__all__ = ["CircularDependency", "CircularDependencyError", "TaskError"]
