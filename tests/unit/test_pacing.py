"""An endpoint's pace: when a row put back unsent is offered again."""

from notifier.channels.gate import Gate
from notifier.channels.webhook import MAX_DEFER, PACE_WINDOW, _Endpoint


def _paced(until: float) -> _Endpoint:
    """An endpoint that answered every 10 ms from t=1 to `until`."""
    e = _Endpoint(Gate(8))
    t = 1.0
    while t < until:
        e.answered(t)
        t += 0.01
    return e


def test_a_new_burst_after_a_quiet_spell_is_offered_again_soon() -> None:
    e = _paced(2.0)
    assert e.measured and e.pace > 50
    e.resumed(2.0 + 30)  # idle for 30 s, then a new burst arrives
    e.answered(32.01)
    assert not e.measured
    assert e.drain_seconds() == 1.0


def test_a_stalled_endpoint_is_offered_again_late() -> None:
    e = _paced(2.0)
    e.answered(2.0 + 15)  # requests in flight all along: no resumed(); one answer after 15 s
    assert e.pace == 0.0 and e.measured
    assert e.drain_seconds() == MAX_DEFER


def test_a_short_pause_keeps_the_window() -> None:
    e = _paced(2.0)
    start, done = e.window_start, e.window_done
    e.resumed(start + PACE_WINDOW)  # idle for less than a long window
    assert (e.window_start, e.window_done) == (start, done)
