"""The offline assistant: exact answers first, then a language model, in words made for speech.

Small models invent the time, slip on arithmetic and forget names under a long context, so the
answers that have one right value come from rules (offline.py: a tool the request plainly names,
the clock, arithmetic, facts the user stated) before the model is asked anything; the embedded
model still fills in a named tool's arguments, under a grammar made from the tool's schema.
Otherwise the model gets a voice preamble, the session's instructions, the conversation so far
and the session's tools, and may call a tool itself. What it writes is
turned into plain speech as it streams: markdown, list markers and code marks removed, line
breaks made into sentence ends, so the synthesizer never reads out "asterisk".

Which model (settings.LOCAL_LLM): `embedded` (default, llm.py), `none` (rules only, the
assistant of earlier versions), and LOCAL_LLM_URL, an OpenAI-compatible server, overrides both.
"""

import dataclasses
import re
from collections.abc import AsyncIterator

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured

from voicechat.local_engine.offline import OfflineResponder
from voicechat.local_engine.responder import (
    ChatCompletionsResponder,
    FunctionCall,
    Responder,
    TextDelta,
    Turn,
)

VOICE_PREAMBLE = (
    "You are a helpful assistant talking with a person by voice. Your words are spoken aloud, "
    "so answer in one or two short sentences of plain conversational English: no lists, no "
    "markdown, no code, no emoji. Only if asked what you are, say you are an AI assistant "
    "running offline on this server with a small language model."
)
# Without a tool to ask, a small model otherwise invents today's weather or news.
NO_TOOLS = (
    "You cannot look anything up: if asked about news, weather, prices or anything else that "
    "changes, say in one sentence that you can't check that."
)
WITH_TOOLS = "When one of your tools can answer, call it instead of guessing."
NOTHING_TO_SAY = "Sorry, I don't have a good answer to that."


class Assistant:
    """A Responder: rules for exact answers, the language model for everything else."""

    def __init__(self, model: Responder, *, tools_by_rules: bool) -> None:
        """`tools_by_rules`: the rules call a tool the request names (for a small model that
        calls tools poorly); otherwise tool choice is the model's alone."""
        self._model = model
        self._rules = OfflineResponder()
        self._tools_by_rules = tools_by_rules

    async def aclose(self) -> None:
        close = getattr(self._model, "aclose", None)
        if close is not None:
            await close()

    async def respond(self, turn: Turn) -> AsyncIterator[TextDelta | FunctionCall]:
        exact = self._rules.direct_answer(turn, tools=self._tools_by_rules)
        if isinstance(exact, FunctionCall):
            fill = getattr(self._model, "fill_arguments", None)
            yield await fill(turn, exact) if fill is not None else exact
            return
        if exact is not None:
            for delta in _word_deltas(exact):
                yield delta
            return
        preamble = f"{VOICE_PREAMBLE} {WITH_TOOLS if turn.tools else NO_TOOLS}"
        facts = self._rules.known_facts(turn)
        instructions = "\n\n".join(p for p in (preamble, turn.instructions, facts) if p)
        spoken = SpokenText()
        said_anything = False
        async for out in self._model.respond(dataclasses.replace(turn, instructions=instructions)):
            if isinstance(out, FunctionCall):
                said_anything = True
                yield out
                continue
            if text := spoken.feed(out.text):
                said_anything = said_anything or bool(text.strip())
                yield TextDelta(text)
        if text := spoken.flush():
            said_anything = said_anything or bool(text.strip())
            yield TextDelta(text)
        if not said_anything:
            yield TextDelta(NOTHING_TO_SAY)


def _word_deltas(text: str) -> list[TextDelta]:
    """Word-sized deltas, as a model streams tokens."""
    return [TextDelta(w if i == 0 else " " + w) for i, w in enumerate(text.split(" "))]


_LINE_MARK = re.compile(r"^\s*(?:[-*+•]|\d{1,2}[.)]|#{1,6}|>)(?:\s+|$)")
_LINK = re.compile(r"\[([^\]]*)\]\([^)]*\)")
_EMPHASIS = re.compile(r"\*+|`+|__|~~")
_EMOJI = re.compile("\\s*[\U0001f300-\U0001faff\u2600-\u27bf\ufe0f]+")


class SpokenText:
    """Streamed model text -> text to speak: no markdown, lists read as sentences.

    Text is released a word at a time (up to the last whitespace), so a marker at the start of
    a line or a pair of asterisks is always whole when it is cleaned.
    """

    def __init__(self) -> None:
        self._pending = ""
        self._line_start = True
        self._ended = True  # the text so far ends a sentence (or nothing was said yet)
        self._after_space = True  # no space is spoken first, nor two in a row

    def feed(self, delta: str) -> str:
        self._pending += delta
        cut = max(self._pending.rfind(" "), self._pending.rfind("\n"))
        if cut < 0:
            return ""
        # The whitespace itself waits with the next word: a line break decides what ends here.
        ready, self._pending = self._pending[:cut], self._pending[cut:]
        return self._clean(ready)

    def flush(self) -> str:
        ready, self._pending = self._pending, ""
        return self._clean(ready)

    def _clean(self, text: str) -> str:
        out = []
        lines = text.split("\n")
        for index, line in enumerate(lines):
            if index < len(lines) - 1:
                line = line.rstrip()
            if index > 0:  # a line break: end the sentence if the line did not
                if not self._ended:
                    out.append(".")
                    self._ended = True
                out.append(" ")
                self._line_start = True
            if self._line_start and line.strip():
                line = _LINE_MARK.sub("", line)
                self._line_start = False
            line = _EMOJI.sub("", _EMPHASIS.sub("", _LINK.sub(r"\1", line)))
            if line.strip():
                self._ended = line.rstrip()[-1] in ".!?:;"
            out.append(line)
        spoken = re.sub(r" {2,}", " ", "".join(out))
        if self._after_space:
            spoken = spoken.lstrip(" ")
        if spoken:
            self._after_space = spoken.endswith(" ")
        return spoken


def warm_up() -> None:
    """Load the embedded model in the background if the settings will use it (server start)."""
    if not settings.LOCAL_LLM_URL and settings.LOCAL_LLM == "embedded":
        from voicechat.local_engine import llm

        llm.warm_up()


def make_responder() -> Responder:
    """The assistant the settings ask for (see the module docstring)."""
    if settings.LOCAL_LLM_URL:
        return Assistant(
            ChatCompletionsResponder(
                base_url=settings.LOCAL_LLM_URL,
                model=settings.LOCAL_LLM_MODEL,
                api_key=settings.LOCAL_LLM_API_KEY,
                timeout=settings.LOCAL_LLM_TIMEOUT,
            ),
            tools_by_rules=False,
        )
    if settings.LOCAL_LLM == "none":
        return OfflineResponder()
    if settings.LOCAL_LLM == "embedded":
        from voicechat.local_engine.llm import EmbeddedResponder

        return Assistant(EmbeddedResponder(), tools_by_rules=True)
    raise ImproperlyConfigured(
        f"LOCAL_LLM must be 'embedded' or 'none', got {settings.LOCAL_LLM!r}"
    )
