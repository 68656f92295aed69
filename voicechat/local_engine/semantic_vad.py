"""semantic_vad: a pause ends the turn as soon as the turn model says the user has finished.

OpenAI's semantic_vad waits for the user to finish what they are saying, and at most 8 s, 4 s
or 2 s (eagerness low, medium or high; auto is medium). Here, the VAD finds the pauses and
Smart-Turn (turn.py) judges each one: a finished sentence ("What is the capital of France?",
P ~0.98) ends its turn DECIDE_AT_MS into the pause; a broken-off one ("a pizza with...", P ~0.1)
is given time, the more the surer the model was that it is unfinished.

The model hears the speech and the pause so far, as in pipecat, which asks 200 ms into a pause.
On our test speech one answer swung with a few tens of ms more or less of the pause ("a pizza
with": 0.04 with 100 ms, 0.30 with 300 ms; "Thank you very much, ...": 0.18 to 0.95), so it
is asked three times as the pause grows (ASK_AT_MS) and the mean decides; if the first two
answers are both SURE, the second decides. Asked later still, with half a second of silence, it
calls almost anything finished (0.83-0.97: "a pizza with" 0.82 with 256 ms more, "Can you tell
me a joke about" 0.87), so it is not asked again; instead the certainty a pause needs falls with
its length, from the eagerness' THRESHOLDS at DECIDE_AT_MS to nothing at its maximum
(PauseJudge.required).

What the model cannot tell is a pause after words that are a sentence of their own: "Can you
suggest a name | for a black cat?" and "Thank you, | that was helpful." score 0.97-0.99 at the
pause, as high as any finished question. Where a reply was begun in the pause, the session
therefore ends a turn judged finished only once that reply is ready to be heard (session.py,
_hold_end): the answer comes no later for it, and a user who goes on before then was pausing.
"""

import asyncio
import logging
import statistics

from voicechat.local_engine import turn, workers

logger = logging.getLogger(__name__)

# When the model is asked, in ms into a pause: the first with the recognizer's early final decode.
ASK_AT_MS = (96, 192, 288)
# Two answers at least this sure end the turn at the second ask (ASK_AT_MS[1]): on the test
# speech every finished sentence but "What is my name?" (0.58-0.78 at the first ask) does.
SURE = 0.9
# The latest a pause is decided on the model's answers alone: when the last answer is in.
DECIDE_AT_MS = ASK_AT_MS[-1]
# The mean certainty a pause needs at DECIDE_AT_MS, by eagerness (auto is medium). pipecat ends a
# turn above 0.5; here half-sentences scored 0.3-0.55 in the mean ("Can you tell me a joke
# about" up to 0.84, a miss at any of these), finished ones 0.79-0.99. Ending a turn the reply
# is not ready for waits for the reply (session.py), so a wrong "finished" costs less than a
# wrong "unfinished", which waits on a pause that is already over.
THRESHOLDS = {"low": 0.85, "medium": 0.7, "auto": 0.7, "high": 0.6}
THRESHOLD = THRESHOLDS["medium"]
# If the turn model fails mid-conversation, a pause this long ends the turn (server_vad's window).
FALLBACK_SILENCE_MS = 500


class PauseJudge:
    """Decides, frame by frame of one pause, whether it ends the user's turn."""

    def __init__(self, *, max_wait_ms: int, eagerness: str = "auto") -> None:
        self.max_wait_ms = max_wait_ms
        self.threshold = THRESHOLDS[eagerness]
        self._answers: list[asyncio.Future[float | None]] = []

    def wants_to_ask(self, pause_ms: int) -> bool:
        """Whether the model should now be asked about the pause so far."""
        asked = len(self._answers)
        return asked < len(ASK_AT_MS) and pause_ms >= ASK_AT_MS[asked]

    def ask(self, pcm16_24k: bytes) -> None:
        """Start judging the speech and the pause so far (off the event loop)."""
        self._answers.append(asyncio.ensure_future(_probability_complete(pcm16_24k)))

    def forget(self) -> None:
        """The voice came back: the answers were about a pause that is over."""
        self._answers = []  # a running call finishes in its thread; its answer is dropped

    @property
    def probability(self) -> float | None:
        """The mean of the answers so far, once they are in (None: none yet, or a failure)."""
        if not self._answers or not all(a.done() for a in self._answers):
            return None
        answers = [a.result() for a in self._answers]
        return None if None in answers else statistics.fmean(answers)

    async def ends_turn(self, pause_ms: int) -> bool:
        """Whether a pause of pause_ms ends the turn (waits for the model's answers)."""
        asked = len(self._answers)
        if asked < 2 or pause_ms < ASK_AT_MS[1]:
            return False
        # Normally answered long ago (~40 ms per call); waiting here when they are not keeps
        # the decision at this point of the audio however fast the audio arrives.
        await asyncio.wait([*self._answers])
        if asked < len(ASK_AT_MS):
            answers = [a.result() for a in self._answers]
            return None not in answers and min(answers) >= SURE
        probability = self.probability
        if probability is None:
            return pause_ms >= FALLBACK_SILENCE_MS
        return probability >= self.required(pause_ms)

    def required(self, pause_ms: int) -> float:
        """The certainty a pause of pause_ms needs to end the turn: less as it goes on.

        It falls slowly at first (a quadratic): a half-sentence scored up to ~0.55, and with a
        straight line it would end a medium turn 1.6 s into a pause, where people still think.
        """
        waited = (pause_ms - DECIDE_AT_MS) / max(1, self.max_wait_ms - DECIDE_AT_MS)
        return self.threshold * max(0.0, 1 - max(0.0, waited) ** 2)


async def _probability_complete(pcm16_24k: bytes) -> float | None:
    try:
        model = turn.get_turn_model()
        return await workers.run_heavy("turn", model.probability_complete, pcm16_24k)
    except Exception:
        # A system check stops the server when the model is missing; this is a model that
        # failed afterwards. The conversation goes on with a fixed silence window.
        logger.exception("the turn model failed; this pause ends the turn after a fixed silence")
        return None
