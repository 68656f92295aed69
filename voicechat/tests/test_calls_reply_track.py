"""The server's side of a call's speaker (voicechat/calls/media.py): reply audio is played in real
time, 20 ms per frame, with silence between replies; it knows what each item has played, when a
response's audio starts and when it has all been played, and what a cut leaves."""

import numpy as np

from voicechat.calls.media import FRAME_BYTES, Cut, ReplyTrack


def pcm(ms: int, level: int = 1000) -> bytes:
    return np.full(24 * ms, level, dtype="<i2").tobytes()


def make_track() -> tuple[ReplyTrack, list[tuple[str, str]]]:
    said: list[tuple[str, str]] = []
    track = ReplyTrack(
        lambda rid: said.append(("started", rid)), lambda rid: said.append(("stopped", rid))
    )
    return track, said


async def frames(track: ReplyTrack, n: int) -> list[np.ndarray]:
    return [(await track.recv()).to_ndarray()[0] for _ in range(n)]


async def test_a_reply_plays_in_order_then_silence_with_started_and_stopped():
    track, said = make_track()
    try:
        track.write("resp_1", "item_1", pcm(30, 100))
        track.write("resp_1", "item_1", pcm(10, 200))
        track.response_done("resp_1")  # all handed over, not yet played
        assert said == []
        played = await frames(track, 3)
        assert [frame.shape[0] * 2 for frame in played] == [FRAME_BYTES] * 3
        assert (played[0] == 100).all()
        assert (played[1][:240] == 100).all() and (played[1][240:] == 200).all()
        assert (played[2] == 0).all()  # silence once the reply has been played
        assert said == [("started", "resp_1"), ("stopped", "resp_1")]
    finally:
        track.stop()


async def test_a_cut_reports_what_was_played_and_drops_the_rest():
    track, said = make_track()
    try:
        track.write("resp_1", "item_1", pcm(100))
        await frames(track, 2)
        assert track.clear() == Cut("resp_1", "item_1", 40)
        assert (await frames(track, 1))[0].max() == 0
        assert track.clear() is None  # nothing playing any more
        track.response_done("resp_1")
        assert said == [("started", "resp_1")]  # cleared, not stopped
    finally:
        track.stop()


async def test_a_cut_between_two_sentences_still_stops_the_response():
    track, said = make_track()
    try:
        track.write("resp_1", "item_1", pcm(20))
        await frames(track, 1)  # the first sentence has been played, the next is not here yet
        assert track.clear() == Cut("resp_1", None, 0)
        track.write("resp_2", "item_2", pcm(20))
        track.response_done("resp_2")
        await frames(track, 1)
        assert said == [("started", "resp_1"), ("started", "resp_2"), ("stopped", "resp_2")]
    finally:
        track.stop()


async def test_text_only_responses_leave_nothing_behind():
    track, said = make_track()
    try:
        track.response_done("resp_text")
        await frames(track, 1)
        assert said == [] and not track._done
    finally:
        track.stop()
