"""Layer 2, pure: join rules, the one definition of when a unit may run given its dependencies.

A unit's join rule (``run_if=``) is a predicate over the terminal states of its
dependencies, each counted as one of three kinds:

* *ok*: COMPLETED, or FAILED/TIMEOUT with a fallback value;
* *failed*: FAILED/TIMEOUT without a fallback, or SKIPPED because something upstream failed;
* *skipped*: SKIPPED by a decision (a condition, ``ctx.skip``, or a join rule that could
  not be met through decisions alone).

CANCELED dependencies never reach a rule: they happen only when the run stops (and then
everything not started is cancelled) or when ``cancel_rest`` cancels what nothing else needs.

:func:`judge` says RUN, WAIT or SKIP from the counts. It is deterministic in the final
states: a unit is skipped early only when a failure has already decided it (the skip cause
cannot change later), and otherwise waits until every dependency it needs is terminal, so
the outcome never depends on the order in which dependencies finished. The one exception
by design is :func:`at_least`, which runs as soon as ``k`` dependencies are ok.

The scheduler keeps the counts; this module only decides.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Final

__all__ = [
    "ALL_DONE",
    "ALL_SUCCESS",
    "ANY_SUCCESS",
    "NONE_FAILED",
    "JoinRule",
    "Verdict",
    "at_least",
    "join_rule",
    "judge",
]


#: The rules without a count, by the name ``run_if=`` takes.
_RULE_NAMES: Final = ("all_success", "none_failed", "all_done", "any_success")


@dataclass(frozen=True, slots=True)
class JoinRule:
    """A unit's join rule; build one with :func:`join_rule` or :func:`at_least`.

    Attributes:
        name: ``"all_success"``, ``"none_failed"``, ``"all_done"``, ``"any_success"`` or
            ``"at_least"``.
        k: For ``at_least``, how many dependencies must be ok.

    .. versionadded:: 0.2
    """

    name: str
    k: int = 0

    def __post_init__(self) -> None:
        """Reject a rule :func:`judge` does not know (it would run the unit at once)."""
        if self.name == "at_least":
            if isinstance(self.k, bool) or not isinstance(self.k, int) or self.k < 1:
                raise ValueError(f"JoinRule('at_least', k) needs an int k >= 1, got {self.k!r}")
        elif self.name not in _RULE_NAMES:
            raise ValueError(_unknown_rule(self.name))
        elif self.k != 0:
            raise ValueError(f"join rule {self.name!r} takes no k, got k={self.k!r}")

    def __str__(self) -> str:
        """The rule as it is written: ``"none_failed"`` or ``at_least(2)``."""
        return f"at_least({self.k})" if self.name == "at_least" else self.name


ALL_SUCCESS: Final = JoinRule("all_success")
NONE_FAILED: Final = JoinRule("none_failed")
ALL_DONE: Final = JoinRule("all_done")
ANY_SUCCESS: Final = JoinRule("any_success")
_BY_NAME: Final = {rule.name: rule for rule in (ALL_SUCCESS, NONE_FAILED, ALL_DONE, ANY_SUCCESS)}


def _unknown_rule(name: object) -> str:
    known = ", ".join(map(repr, _RULE_NAMES))
    return f"unknown join rule {name!r}; use one of {known} or at_least(k)"


def at_least(k: int) -> JoinRule:
    """The rule that runs a unit as soon as ``k`` of its dependencies are ok.

    With ``add_unit(..., cancel_rest=True)``, its unfinished dependencies that nothing else
    still needs are then cancelled (the quorum of a fan-out to several providers).

    Raises:
        TypeError: ``k`` is not an int.
        ValueError: ``k`` is below 1.

    .. versionadded:: 0.2
    """
    if isinstance(k, bool) or not isinstance(k, int):
        raise TypeError(f"at_least(k) needs an int, got {k!r}")
    if k < 1:
        raise ValueError(f"at_least(k) needs k >= 1, got {k}")
    return JoinRule("at_least", k)


def join_rule(value: object) -> JoinRule:
    """``value`` as a :class:`JoinRule`: a rule, or one of the four rule names.

    Raises:
        TypeError: ``value`` is neither.
        ValueError: ``value`` is an unknown name.
    """
    if isinstance(value, JoinRule):
        return value
    if isinstance(value, str):
        rule = _BY_NAME.get(value)
        if rule is None:
            raise ValueError(_unknown_rule(value))
        return rule
    raise TypeError(f"run_if must be a rule name or at_least(k), got {value!r}")


class Verdict(enum.Enum):
    """What a unit's rule says now."""

    WAIT = "wait"
    RUN = "run"
    SKIP = "skip"


def judge(  # noqa: PLR0911 - one short branch per rule reads as the rules' table
    rule: JoinRule, ok: int, failed: int, skipped: int, left: int
) -> Verdict:
    """Apply ``rule`` to the counts of a unit's dependencies by kind (``left``: not terminal).

    The skip's cause is a failure upstream when ``failed`` is non-zero, else the rule.
    """
    name = rule.name
    if name == "all_success":
        if failed:
            return Verdict.SKIP
        if left:
            return Verdict.WAIT
        return Verdict.SKIP if skipped else Verdict.RUN
    if name == "none_failed":
        if failed:
            return Verdict.SKIP
        if left:
            return Verdict.WAIT
        return Verdict.RUN if ok else Verdict.SKIP
    if name == "all_done":
        return Verdict.WAIT if left else Verdict.RUN
    if name == "any_success":
        if left:
            return Verdict.WAIT
        return Verdict.RUN if ok else Verdict.SKIP
    # at_least(k): as soon as k are ok; skipped only once nothing more can come.
    if ok >= rule.k:
        return Verdict.RUN
    return Verdict.WAIT if left else Verdict.SKIP
