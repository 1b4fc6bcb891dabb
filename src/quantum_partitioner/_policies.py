"""Retry policies: which failures are retried, and how long to wait before the next attempt.

A policy is a small frozen object and a pure function of the attempt number; the scheduler
turns its delay into a ``not_before`` deadline, so a unit waiting for its retry holds no
worker. ``QuantumPartitioner(retry_policy=...)`` sets the default, ``add_unit(...,
retry_policy=...)`` overrides it per unit, and ``retries=N`` on a unit says how many extra
attempts it gets.

The default reproduces the original QuantumPartitioner API's backoff,
``min(2**attempt * 0.1, 5)`` seconds after the ``attempt``-th failure, plus up to 10% random
jitter so that many units failing together do not retry in lockstep.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field

__all__ = ["ExponentialBackoff", "RetryPolicy"]


@dataclass(frozen=True, slots=True)
class ExponentialBackoff:
    """Wait ``min(initial * multiplier**failures, maximum)`` seconds, plus jitter.

    Args:
        initial: Seconds before the multiplier applies (default 0.1).
        multiplier: Growth per failure (default 2).
        maximum: Longest wait in seconds before jitter (default 5).
        jitter: Up to this fraction of the wait is added at random; 0 makes it exact.

    .. versionadded:: 0.1
    """

    initial: float = 0.1
    multiplier: float = 2.0
    maximum: float = 5.0
    jitter: float = 0.1

    def __post_init__(self) -> None:
        """Reject negative and infinite settings (an infinite wait is a retry that never comes)."""
        for name in ("initial", "multiplier", "maximum", "jitter"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise TypeError(f"ExponentialBackoff: {name} must be a number, got {value!r}")
            if not 0 <= value < math.inf:
                raise ValueError(
                    f"ExponentialBackoff: {name} must be >= 0 and finite, got {value!r}"
                )

    def delay(self, failures: int) -> float:
        """Seconds to wait after the ``failures``-th failed attempt (1 for the first)."""
        try:
            grown = self.initial * self.multiplier**failures if self.initial else 0.0
        except OverflowError:  # a float power past 1e308 raises: the wait is the maximum
            grown = self.maximum
        base = min(grown, self.maximum)
        if self.jitter:
            base += random.random() * self.jitter * base  # noqa: S311 - jitter, not crypto
        return base


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Which exceptions earn another attempt, and the backoff before it.

    Args:
        backoff: The wait before each retry.
        retry_on: Exception types that are retried; others fail the unit at once.
            Timeouts (:class:`UnitTimeoutError`) are retried when they match.

    .. versionadded:: 0.1
    """

    backoff: ExponentialBackoff = field(default_factory=ExponentialBackoff)
    retry_on: type[BaseException] | tuple[type[BaseException], ...] = Exception

    def __post_init__(self) -> None:
        """Reject what would only fail at the first retry."""
        kinds = self.retry_on if isinstance(self.retry_on, tuple) else (self.retry_on,)
        if not kinds or not all(
            isinstance(kind, type) and issubclass(kind, BaseException) for kind in kinds
        ):
            raise TypeError(
                f"RetryPolicy: retry_on must be an exception class or a tuple of them, "
                f"got {self.retry_on!r}"
            )
        if not callable(getattr(self.backoff, "delay", None)):
            raise TypeError(
                f"RetryPolicy: backoff must have a delay(failures) method, got {self.backoff!r}"
            )

    def should_retry(self, error: BaseException) -> bool:
        """Whether ``error`` is worth another attempt."""
        return isinstance(error, self.retry_on)

    def delay(self, failures: int) -> float:
        """Seconds to wait after the ``failures``-th failure.

        Raises:
            ValueError: The backoff gave no finite number of seconds >= 0 (a backoff of
                your own; an infinite wait would be a retry that never comes).
        """
        seconds = self.backoff.delay(failures)
        if (
            isinstance(seconds, bool)
            or not isinstance(seconds, int | float)
            or not 0 <= seconds < math.inf
        ):
            raise ValueError(
                f"the retry backoff {self.backoff!r} gave {seconds!r} seconds after failure "
                f"{failures}, not a finite number >= 0"
            )
        return seconds


DEFAULT_RETRY_POLICY = RetryPolicy()
