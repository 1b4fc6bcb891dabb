"""Retry policies: ExponentialBackoff delays and RetryPolicy filtering and validation."""

from __future__ import annotations

import dataclasses
import math

import pytest

from quantum_partitioner import ExponentialBackoff, RetryPolicy, UnitTimeoutError, _policies

# -- ExponentialBackoff ------------------------------------------------------------------------


def test_default_backoff_without_jitter_is_the_original_formula():
    """ExponentialBackoff(jitter=0).delay(n) is exactly min(2**n * 0.1, 5)."""
    backoff = ExponentialBackoff(jitter=0)
    for failures in range(12):
        assert backoff.delay(failures) == min(2**failures * 0.1, 5)


def test_backoff_defaults_are_the_original_ones():
    """The defaults are initial 0.1 s, multiplier 2, maximum 5 s and 10% jitter."""
    backoff = ExponentialBackoff()
    assert (backoff.initial, backoff.multiplier, backoff.maximum, backoff.jitter) == (
        0.1,
        2.0,
        5.0,
        0.1,
    )


def test_custom_backoff_grows_and_caps():
    """initial, multiplier and maximum shape the wait."""
    backoff = ExponentialBackoff(initial=1.0, multiplier=3.0, maximum=20.0, jitter=0)
    assert [backoff.delay(n) for n in range(5)] == [1.0, 3.0, 9.0, 20.0, 20.0]


def test_constant_backoff_with_multiplier_one():
    """multiplier=1 waits the same time after every failure."""
    backoff = ExponentialBackoff(initial=0.5, multiplier=1, jitter=0)
    assert {backoff.delay(n) for n in range(1, 10)} == {0.5}


def test_zero_backoff_retries_at_once():
    """initial=0 never waits, whatever the jitter."""
    backoff = ExponentialBackoff(initial=0, jitter=0.5)
    assert [backoff.delay(n) for n in range(1, 5)] == [0, 0, 0, 0]


def test_jitter_adds_a_random_fraction_of_the_wait(monkeypatch):
    """The jitter adds random() * jitter * wait on top of the wait."""
    monkeypatch.setattr(_policies.random, "random", lambda: 0.5)
    backoff = ExponentialBackoff(jitter=0.2)
    assert backoff.delay(1) == pytest.approx(0.2 * 1.1)
    assert backoff.delay(10) == pytest.approx(5 * 1.1)


def test_jitter_stays_within_its_bound_and_varies():
    """Default jitter keeps each wait within [wait, 1.1 * wait] and spreads them out."""
    backoff = ExponentialBackoff()
    delays = [backoff.delay(3) for _ in range(200)]
    assert all(0.8 <= d <= 0.8 * 1.1 for d in delays)
    assert len(set(delays)) > 100


@pytest.mark.parametrize("field", ["initial", "multiplier", "maximum", "jitter"])
def test_backoff_rejects_negative_settings(field):
    """A negative setting raises ValueError naming the setting."""
    with pytest.raises(ValueError, match=field):
        ExponentialBackoff(**{field: -0.5})


@pytest.mark.parametrize("field", ["initial", "multiplier", "maximum", "jitter"])
@pytest.mark.parametrize("value", ["1", None, True], ids=["str", "none", "bool"])
def test_backoff_rejects_non_numbers(field, value):
    """A setting that is not a number (bools included) is rejected, naming the setting."""
    with pytest.raises((TypeError, ValueError), match=field):
        ExponentialBackoff(**{field: value})


@pytest.mark.parametrize("field", ["initial", "multiplier", "maximum", "jitter"])
def test_backoff_rejects_nan(field):
    """A NaN setting is rejected (it would make every retry deadline NaN or ignore the cap)."""
    with pytest.raises(ValueError, match=field):
        ExponentialBackoff(**{field: math.nan})


@pytest.mark.parametrize("field", ["initial", "multiplier", "maximum", "jitter"])
def test_backoff_rejects_infinity(field):
    """An infinite setting is rejected: the wait it gives is a retry that never comes."""
    with pytest.raises(ValueError, match=f"{field} must be >= 0 and finite"):
        ExponentialBackoff(**{field: math.inf})


def test_backoff_past_the_float_range_waits_the_maximum():
    """After 1,024+ failures ``multiplier**failures`` leaves the float range: the cap holds."""
    backoff = ExponentialBackoff(initial=0, maximum=0.5, jitter=0)
    assert backoff.delay(1100) == 0.0
    assert ExponentialBackoff(maximum=0.5, jitter=0).delay(1100) == 0.5
    assert ExponentialBackoff(multiplier=2, maximum=0.5, jitter=0).delay(1100) == 0.5


def test_backoff_is_frozen_and_hashable():
    """A backoff is an immutable value."""
    backoff = ExponentialBackoff()
    with pytest.raises(dataclasses.FrozenInstanceError):
        backoff.initial = 1.0  # type: ignore[misc]
    assert backoff == ExponentialBackoff()
    assert hash(backoff) == hash(ExponentialBackoff())


# -- RetryPolicy -------------------------------------------------------------------------------


def test_default_policy_retries_exceptions_but_not_base_exceptions():
    """By default every Exception is retried; KeyboardInterrupt and SystemExit are not."""
    policy = RetryPolicy()
    assert policy.should_retry(ValueError())
    assert policy.should_retry(UnitTimeoutError("u", 1.0))
    assert not policy.should_retry(KeyboardInterrupt())
    assert not policy.should_retry(SystemExit(1))


def test_retry_on_one_type_matches_subclasses_only():
    """retry_on=OSError retries OSError and its subclasses, nothing else."""
    policy = RetryPolicy(retry_on=OSError)
    assert policy.should_retry(OSError())
    assert policy.should_retry(ConnectionResetError())
    assert not policy.should_retry(ValueError())


def test_retry_on_tuple_matches_any_member():
    """retry_on=(KeyError, TimeoutError) retries either, timeouts of units included."""
    policy = RetryPolicy(retry_on=(KeyError, TimeoutError))
    assert policy.should_retry(KeyError())
    assert policy.should_retry(UnitTimeoutError("u", 2.0))
    assert not policy.should_retry(ValueError())


def test_retry_on_excluding_timeouts():
    """A policy that retries only ValueError does not retry a unit's timeout."""
    assert not RetryPolicy(retry_on=ValueError).should_retry(UnitTimeoutError("u", 1.0))


def test_policy_delay_comes_from_its_backoff():
    """RetryPolicy.delay is its backoff's delay."""
    policy = RetryPolicy(backoff=ExponentialBackoff(initial=2.0, multiplier=2, jitter=0))
    assert [policy.delay(n) for n in (1, 2, 3)] == [4.0, 5.0, 5.0]


def test_default_policy_uses_default_backoff():
    """RetryPolicy() waits by the original API's backoff, with jitter."""
    assert RetryPolicy().backoff == ExponentialBackoff()


@pytest.mark.parametrize(
    "retry_on",
    ["ValueError", int, (ValueError, 3), (ValueError, "KeyError"), ValueError()],
    ids=["str", "non-exception-class", "tuple-with-int", "tuple-with-str", "instance"],
)
def test_policy_rejects_retry_on_that_is_not_exception_types(retry_on):
    """retry_on must be an exception class or a tuple of them (TypeError otherwise)."""
    with pytest.raises(TypeError, match="retry_on"):
        RetryPolicy(retry_on=retry_on)


class _FixedBackoff:
    def __init__(self, seconds):
        self.seconds = seconds

    def delay(self, failures):
        return self.seconds


@pytest.mark.parametrize("seconds", [math.inf, math.nan, -1, "5", None, True])
def test_policy_rejects_a_wait_its_backoff_gives_that_is_no_finite_number(seconds):
    """A backoff of one's own that gives no finite wait >= 0: ValueError naming the value."""
    with pytest.raises(ValueError, match=r"gave .* seconds after failure 1, not a finite"):
        RetryPolicy(backoff=_FixedBackoff(seconds)).delay(1)
    assert RetryPolicy(backoff=_FixedBackoff(0)).delay(1) == 0


@pytest.mark.parametrize("backoff", [0.5, None, "exponential"], ids=["float", "none", "str"])
def test_policy_rejects_backoff_without_delay(backoff):
    """backoff must be a backoff object (TypeError otherwise, not at the first retry)."""
    with pytest.raises(TypeError, match="backoff"):
        RetryPolicy(backoff=backoff)


def test_policy_is_frozen():
    """A policy is immutable."""
    with pytest.raises(dataclasses.FrozenInstanceError):
        RetryPolicy().retry_on = KeyError  # type: ignore[misc]
