"""bench/webrtc_calls.py's bookkeeping: which reply answers which utterance, when a reply
starts, where the latency doubles. No timing is measured here."""

from bench.webrtc_calls import (
    calls_before_doubling,
    latencies,
    median_counting_missed,
    reply_starts,
    spread,
)


def test_each_end_is_answered_by_the_first_start_before_the_next_end():
    delays, missed = latencies([1.0, 5.0, 9.0, 13.0], [0.5, 1.4, 2.0, 9.9, 14.2])
    # 1.0 -> 1.4 (2.0 is the same reply's later part or a second one: not counted);
    # 5.0 has no start before 9.0; 9.0 -> 9.9; 13.0 -> 14.2.
    assert [round(d, 3) for d in delays] == [0.4, 0.9, 1.2]
    assert missed == 1


def test_a_start_at_the_very_moment_of_the_end_is_not_its_reply_and_none_is_missed():
    assert latencies([2.0], [2.0]) == ([], 1)
    assert latencies([], [1.0]) == ([], 0)
    assert latencies([3.0, 1.0], [3.5, 1.25]) == ([0.25, 0.5], 0)  # in any order


def test_a_reply_starts_with_a_loud_frame_after_a_quiet_spell():
    frames = [(0.00, False), (0.02, True), (0.04, True), (0.06, False), (0.20, True)]
    frames += [(0.40, False), (0.60, True), (0.62, True)]
    # 0.20 follows 0.04 by less than 0.3 s: the same reply; 0.60 follows 0.20 by 0.4 s.
    assert reply_starts(frames, quiet=0.3) == [0.02, 0.60]
    assert reply_starts([(0.0, False)]) == []


def test_calls_before_the_median_doubles():
    assert calls_before_doubling({1: 100.0, 2: 150.0, 4: 199.0, 8: 450.0}) == 4
    assert calls_before_doubling({1: 100.0, 2: 200.0, 4: 150.0}) == 1  # doubled at 2: stop
    assert calls_before_doubling({2: 100.0, 1: 80.0}) == 2  # by N, not by insertion
    assert calls_before_doubling({}) is None


def test_spread():
    assert spread([3.0, 1.0, 2.0]) == {"median": 2.0, "min": 1.0, "max": 3.0, "count": 3}
    assert spread([])["median"] is None


def test_an_unanswered_utterance_counts_as_an_endless_latency():
    assert median_counting_missed([0.8, 0.9, 1.0], 0) == 0.9
    assert median_counting_missed([0.8, 0.9, 1.0], 1) == 0.95
    assert median_counting_missed([0.8], 2) == float("inf")  # most got no reply: doubled
    assert median_counting_missed([], 0) is None
