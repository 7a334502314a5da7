"""`vms.outage`: what a ping saw during a migration (pure parsing of fping's output)."""

from __future__ import annotations

import math

from ovnk_secondary.sandbox import vms


def _reply(epoch: float, seq: int) -> str:
    """A reply line of `fping -D -l` (5.1): seq from 0; a duplicate repeats its seq."""
    return f"[{epoch:.5f}] 10.0.0.5 : [{seq}], 64 bytes, 0.50 ms (0.50 avg, 0% loss)"


def _summary(sent: int, received: int) -> str:
    """What `fping -l -s` prints at SIGINT: the target's line (`xmt` counts a ping once its
    fate is known, and a duplicate again: not the sent count), then the global statistics."""
    return "\n".join([
        f"10.0.0.5 : xmt/rcv/%loss = {received + 1}/{received}/0%, min/avg/max = 0.4/0.5/0.6",
        "       1 targets", f" {sent:7d} ICMP Echos sent",
        f" {received:7d} ICMP Echo Replies received", "       0 other ICMP received"])


def test_the_longest_gap_is_between_two_replies() -> None:
    lines = [_reply(100.00, 0), _reply(100.01, 1), _reply(100.10, 9), _reply(100.102, 9),
             _reply(100.11, 10), _summary(11, 4)]
    seen = vms.outage("\n".join(lines))
    assert (seen.sent, seen.received, seen.lost, seen.duplicates) == (11, 4, 7, 1)
    assert math.isclose(seen.longest_gap, 0.09) and seen.gap_start == 100.01
    assert [(began, round(length, 3)) for began, length in seen.gaps] == [(100.01, 0.09)]
    assert math.isclose(seen.longest_within(100.05, 100.06), 0.09)  # inside it
    assert seen.longest_within(100.105, 100.2) == 0.0  # after it
    # replies came back 0.06 s after a resume at 100.04 (the gap 100.01-100.10), none after
    assert math.isclose(seen.back_after(100.0, 100.2, 100.04), 0.06)
    assert seen.back_after(100.0, 100.2, 100.10) == 0.0  # the gap ended by then
    assert seen.back_after(100.105, 100.2, 100.11) == 0.0  # no gap in the window
    # a gap that began after the resume is another one, not the resume's
    assert seen.back_after(100.0, 100.2, 100.005) == 0.0


def test_an_outage_at_the_end_of_the_window_counts() -> None:
    # the last 200 requests (2 s at 10 ms) unanswered: no two replies around them
    lines = [_reply(100.00 + i / 100, i) for i in range(50)] + [_summary(250, 50)]
    seen = vms.outage("\n".join(lines), interval=0.01)
    assert math.isclose(seen.longest_gap, 2.0) and math.isclose(seen.gap_start, 100.49)
    assert math.isclose(seen.longest_within(101.0, 101.1), 2.0)


def test_an_outage_at_the_start_counts_and_no_reply_is_an_infinite_gap() -> None:
    lines = [_reply(101.00 + i / 100, i + 30) for i in range(20)] + [_summary(50, 20)]
    seen = vms.outage("\n".join(lines), interval=0.01)
    assert math.isclose(seen.longest_gap, 0.3) and math.isclose(seen.gap_start, 100.7)
    assert vms.outage(_summary(10, 0)).longest_gap == math.inf
