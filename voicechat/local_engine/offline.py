"""The rule-based responder: LOCAL_LLM=none, and the exact answers ahead of any model.

It has no language model and says so. It answers the time and date, does spoken arithmetic,
remembers what the user said earlier in the conversation (the conversation items are its only
memory, so deleting an item makes it forget), and calls a session tool when a request matches
the tool's name or description, answering from the result the client sends back.
"""

import json
import re
import zoneinfo
from collections.abc import AsyncIterator
from datetime import datetime

from django.utils import timezone

from voicechat.local_engine import arithmetic
from voicechat.local_engine.responder import FunctionCall, TextDelta, Turn

CAPABILITIES = (
    "I can tell you the time or the date, do arithmetic like twelve times seven, "
    "and remember what you tell me, like your name."
)
JOKES = (
    "Why did the computer go to the doctor? It had a virus.",
    "I would tell you a joke about UDP, but you might not get it.",
    "Why do programmers prefer dark mode? Because light attracts bugs.",
)
_STOPWORDS = set(
    """a an the and or but so to of in on at for from with by about is are was were be been am
    i me my you your it its this that these those what whats what's which who how when where why
    do does did can could would should will please tell give show get set fetch find check make
    current now today some any up down out there here just like want know let us our we they them
    hi hello hey ok okay yes no not""".split()
)
_GENERIC_TOOL_WORDS = {
    "get",
    "set",
    "fetch",
    "find",
    "lookup",
    "look",
    "check",
    "do",
    "make",
    "current",
    "info",
    "information",
    "data",
    "tool",
    "function",
    "the",
}
_PLACE_PARAMS = (
    "location",
    "city",
    "place",
    "country",
    "town",
    "where",
    "destination",
    "address",
    "region",
    "area",
)


def _clean(text: str) -> str:
    """Punctuation to spaces (keeping arithmetic symbols); same length stays irrelevant here."""
    return re.sub(r"\s+", " ", re.sub(r"[^\w'+*/^.,\- ]", " ", text)).strip(" .,")


def _words(text: str) -> list[str]:
    return re.findall(r"[a-z0-9']+", text.lower())


def _stem(word: str) -> str:
    for suffix in ("ing", "ers", "es", "ed", "er", "s"):
        if len(word) > len(suffix) + 3 and word.endswith(suffix):
            return word[: -len(suffix)]
    return word


_PHRASE_END = set(
    """and but so because i i'm what who please today tomorrow tonight now right this next
    later then at on in for with using from to""".split()
)


def _phrase(value: str) -> str:
    """Trim a remembered phrase at the first joining word ("Ada and I live..." -> "Ada")."""
    words = value.strip(" .,!?").split()
    out = []
    for w in words:
        if w.lower() in _PHRASE_END:
            break
        out.append(w)
    return " ".join(out[:4])


class Memory:
    """Facts the user stated in the conversation, latest statement wins."""

    def __init__(self, user_texts: list[str]) -> None:
        self.name: str | None = None
        self.facts: dict[str, str] = {}
        self.likes: list[str] = []
        for text in user_texts:
            self._learn(_clean(text))

    def _learn(self, text: str) -> list[str]:
        """Record statements in `text`; returns acknowledgements for the new facts."""
        said = []
        low = text.lower()
        m = re.search(
            r"\b(?:my name is|my name's|call me|i am called|i'm called)\s+([\w' -]+)", low
        )
        if not m:
            m = re.match(r"(?:hi|hello|hey)?[ ,]*(?:i am|i'm)\s+([a-z]+)\s*$", low)
        if m and (name := _phrase(text[m.start(1) : m.end(1)])):
            self.name = name if name != name.lower() else name.title()
            said.append(f"Nice to meet you, {self.name}!")
        for m in re.finditer(r"\bmy ([a-z][a-z ]{1,30}?) (?:is|are|was) ([\w' -]+)", low):
            key = m.group(1).strip()
            if key in ("name",):
                continue
            value = _phrase(text[m.start(2) : m.end(2)])
            if value:
                self.facts[key] = value
                said.append(f"Got it: your {key} is {value}.")
        m = re.search(r"\bi live in ([\w' -]+)", low)
        if m and (place := _phrase(text[m.start(1) : m.end(1)])):
            self.facts["home"] = place if place != place.lower() else place.title()
            said.append(f"Got it, you live in {self.facts['home']}.")
        m = re.search(r"\bi (?:really )?(?:like|love|enjoy) ([\w' -]+)", low)
        if m and (thing := _phrase(text[m.start(1) : m.end(1)])):
            self.likes.append(thing)
            said.append(f"Good to know that you like {thing}.")
        m = re.search(r"\bi am (\w+) years old|\bi'm (\w+) years old", low)
        if m:
            self.facts["age"] = m.group(1) or m.group(2)
            said.append(f"Got it, you are {self.facts['age']} years old.")
        return said


def _now(time_zone: str | None = None) -> datetime:
    return timezone.localtime(timezone=zoneinfo.ZoneInfo(time_zone) if time_zone else None)


def _spoken_time(now: datetime) -> str:
    return now.strftime("%I:%M %p").lstrip("0")


def _spoken_date(now: datetime) -> str:
    return f"{now.strftime('%A, %B')} {now.day}, {now.year}"


def _end(text: str) -> str:
    """`text` as a sentence: one final punctuation mark."""
    text = str(text).strip()
    return text if text[-1:] in ".!?" else text + "."


def _result_sentence(tool: str, output: str) -> str:
    """Say a function_call_output in words."""
    label = tool.replace("_", " ")
    try:
        data = json.loads(output)
    except (TypeError, ValueError):
        data = output
    if isinstance(data, dict):
        for key in ("result", "answer", "message", "text", "summary", "output", "error"):
            if isinstance(data.get(key), str | int | float) and len(data) <= 2:
                return _end(f"{label.capitalize()} says: {data[key]}")
        parts = []
        for key, value in list(data.items())[:6]:
            if isinstance(value, dict):
                value = ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in value.items())
            elif isinstance(value, list):
                value = ", ".join(str(v) for v in value[:6])
            parts.append(f"{key.replace('_', ' ')} is {value}")
        if not parts:
            return f"{label.capitalize()} finished, with nothing to report."
        return f"Here's what {label} returned: " + ", ".join(parts) + "."
    if isinstance(data, list):
        return f"{label.capitalize()} returned: " + ", ".join(str(v) for v in data[:8]) + "."
    return _end(f"{label.capitalize()} says: {data}")


def _tool_score(tool: dict, words: set[str]) -> float:
    name_words = {_stem(w) for w in re.split(r"[_\W]+", tool.get("name", "").lower()) if w}
    name_words -= _GENERIC_TOOL_WORDS
    desc_words = {_stem(w) for w in _words(tool.get("description") or "")} - _STOPWORDS
    return 2 * len(name_words & words) + len((desc_words - name_words) & words)


def _fill_arguments(tool: dict, text: str) -> dict:
    """Best-effort arguments from the user's words, following the tool's JSON schema."""
    params = tool.get("parameters") or {}
    props: dict = params.get("properties") or {}
    required = set(params.get("required") or [])
    low = text.lower()
    args: dict = {}
    numbers = re.findall(r"-?\d+(?:\.\d+)?", low)
    for name, schema in props.items():
        kind = schema.get("type")
        if "enum" in schema:
            for option in schema["enum"]:
                if str(option).lower() in low:
                    args[name] = option
                    break
            else:
                if name in required:
                    args[name] = schema["enum"][0]
        elif kind in ("number", "integer") and numbers:
            value = float(numbers.pop(0))
            args[name] = int(value) if kind == "integer" else value
        elif kind == "boolean":
            if name in required:
                args[name] = not re.search(r"\b(no|not|off|false|disable)\b", low)
        elif kind == "string" or kind is None:
            value = None
            if any(p in name.lower() for p in _PLACE_PARAMS):
                m = re.search(r"\b(?:in|for|at|near|to)\s+([\w' -]+)", text, re.IGNORECASE)
                if m:
                    value = _phrase(m.group(1))
                    value = value if value != value.lower() else value.title()
            else:
                m = re.search(r"\b(?:about|for|called|named|of|on)\s+([\w' -]+)", text, re.I)
                value = _phrase(m.group(1)) if m else None
            if value:
                args[name] = value
            elif name in required:
                args[name] = text
    return args


class OfflineResponder:
    """A friendly, honest responder with no language model behind it."""

    async def respond(self, turn: Turn) -> AsyncIterator[TextDelta | FunctionCall]:
        reply = self.reply(turn)
        if isinstance(reply, FunctionCall):
            yield reply
            return
        # Word-sized deltas, like a model streaming tokens.
        for i, word in enumerate(reply.split(" ")):
            yield TextDelta(word if i == 0 else " " + word)

    def reply(self, turn: Turn) -> str | FunctionCall:
        """The whole reply to the latest turn."""
        history = turn.history
        if not history:
            return "Hi! " + self._introduction()
        last = history[-1]
        if last.get("type") == "function_call_output":
            return self._from_tool_result(history)
        user_texts = [h["text"] for h in history if h.get("role") == "user" and h.get("text")]
        text = _clean(last.get("text") or "") if last.get("role") == "user" else ""
        if last.get("role") != "user":
            return "Is there anything else I can help you with?"
        if not text:
            return "Sorry, I didn't catch that. Could you say it again?"
        call = self._maybe_call_tool(turn, text)
        if call is not None:
            return call
        memory = Memory(user_texts[:-1])
        return (
            self._recall(text, memory, user_texts)
            or self._remember(text, memory)
            or self._clock(text, turn.time_zone)
            or self._arithmetic(text)
            or self._small_talk(text, memory, turn)
            or self._fallback(text, turn)
        )

    def direct_answer(self, turn: Turn, *, tools: bool = True) -> str | FunctionCall | None:
        """The reply when the latest user message has one right answer, else None.

        What the assistant (assistant.py) does before any language model is asked: call the
        session tool the request plainly names (or the one tool_choice forces; `tools=False`
        leaves tools to a model that chooses them well), tell the time and date, do arithmetic,
        recall facts the user stated: all things small models get wrong.
        """
        last = turn.history[-1] if turn.history else {}
        if last.get("role") != "user":
            return None
        text = _clean(last.get("text") or "")
        if not text:
            return "Sorry, I didn't catch that. Could you say it again?"
        call = self._maybe_call_tool(turn, text) if tools else None
        if call is not None:
            return call
        user_texts = [h["text"] for h in turn.history if h.get("role") == "user" and h.get("text")]
        memory = Memory(user_texts[:-1])
        return (
            self._recall(text, memory, user_texts)
            or self._introduction_heard(text)
            or self._clock(text, turn.time_zone)
            or self._arithmetic(text)
        )

    def known_facts(self, turn: Turn) -> str:
        """What the user has said about themselves, as a sentence for a model's instructions
        ("" if nothing): small models lose a name said ten turns ago."""
        memory = Memory(
            [h["text"] for h in turn.history if h.get("role") == "user" and h.get("text")]
        )
        facts = [f"their name is {memory.name}"] if memory.name else []
        facts += [f"their {key} is {value}" for key, value in memory.facts.items() if key != "home"]
        if "home" in memory.facts:
            facts.append(f"they live in {memory.facts['home']}")
        facts += [f"they like {thing}" for thing in memory.likes[-3:]]
        return f"What the user has told you: {'; '.join(facts)}." if facts else ""

    def _introduction_heard(self, text: str) -> str | None:
        """ "My name is Ada." gets a greeting by name (a small model often skips the name); an
        introduction with a question in it is left to the question's answerer."""
        explicit = re.search(r"\b(my name(?: is|'s)|call me|i(?: am|'m) called)\b", text, re.I)
        if "?" in text or not explicit:  # "I'm tired" is no name
            return None
        memory = Memory([])
        memory._learn(text)
        return f"Nice to meet you, {memory.name}!" if memory.name else None

    # Skills, each returns None when the text is not for it.

    def _introduction(self) -> str:
        return (
            "I'm the offline assistant on this server. There's no AI model behind me, "
            f"so I can only do simple things. {CAPABILITIES}"
        )

    def _maybe_call_tool(self, turn: Turn, text: str) -> FunctionCall | None:
        tools = [t for t in turn.tools if t.get("type", "function") == "function" and t.get("name")]
        if not tools or turn.tool_choice == "none":
            return None
        words = {_stem(w) for w in _words(text)} - _STOPWORDS
        choice = turn.tool_choice
        if isinstance(choice, dict):
            tools = [t for t in tools if t["name"] == choice.get("name")] or tools
        best = max(tools, key=lambda t: _tool_score(t, words))
        forced = choice == "required" or isinstance(choice, dict)
        if not forced and _tool_score(best, words) < 2:
            return None
        return FunctionCall(best["name"], json.dumps(_fill_arguments(best, text)))

    def _from_tool_result(self, history: list[dict]) -> str:
        outputs = []
        names = {h["call_id"]: h["name"] for h in history if h.get("type") == "function_call"}
        for entry in reversed(history):
            if entry.get("type") != "function_call_output":
                break
            outputs.append(
                _result_sentence(names.get(entry["call_id"], "the tool"), entry["output"])
            )
        return " ".join(reversed(outputs))

    def _recall(self, text: str, memory: Memory, user_texts: list[str]) -> str | None:
        low = text.lower()
        if re.search(r"\b(what(?:'s| is| was) my name|who am i|(know|remember) my name)\b", low):
            if memory.name:
                return f"Your name is {memory.name}."
            return "You haven't told me your name yet. What should I call you?"
        if re.search(r"\bwhere do i live\b", low):
            if "home" in memory.facts:
                return f"You told me you live in {memory.facts['home']}."
            return "You haven't told me where you live."
        if re.search(r"\bwhat do i (like|love|enjoy)\b", low):
            if memory.likes:
                return "You told me you like " + " and ".join(memory.likes[-3:]) + "."
            return "You haven't told me what you like yet."
        if re.search(r"\bhow old am i\b", low):
            if "age" in memory.facts:
                return f"You told me you are {memory.facts['age']} years old."
            return "You haven't told me your age."
        m = re.search(r"\b(?:what(?:'s| is| are)|(?:know|remember)) my ([a-z ]{2,30}?)\s*\??$", low)
        if m:
            key = m.group(1).strip()
            if key in memory.facts:
                return f"Your {key} is {memory.facts[key]}."
            return f"You haven't told me your {key} yet."
        if re.search(r"\bwhat did i (just )?say\b", low):
            if len(user_texts) >= 2:
                return f'You said: "{user_texts[-2]}".'
            return "This is the first thing you've said to me."
        return None

    def _remember(self, text: str, memory: Memory) -> str | None:
        said = memory._learn(text)
        return " ".join(said) if said else None

    def _clock(self, text: str, time_zone: str | None) -> str | None:
        low = text.lower()
        now = _now(time_zone)
        if re.search(r"\bwhat(?:'s| is)? the time\b|\bwhat time\b|\btime is it\b", low):
            return f"It's {_spoken_time(now)}."
        if re.search(r"\b(date|what day|which day|day is it|day today)\b", low):
            return f"Today is {_spoken_date(now)}."
        if re.search(r"\bwhat year\b", low):
            return f"It's {now.year}."
        return None

    def _arithmetic(self, text: str) -> str | None:
        try:
            numbers, ops = arithmetic.parse(text)
        except arithmetic.NotArithmetic:
            return None
        spoken = arithmetic.say_expression(numbers, ops)
        try:
            result = arithmetic.say_number(arithmetic.evaluate(numbers, ops))
        except ZeroDivisionError:
            return "Dividing by zero isn't defined, so there's no answer to give."
        except OverflowError:
            return "That number is too big for me to say."
        if not ops:
            return f"That's {result}."
        return f"{spoken.capitalize()} is {result}."

    def _small_talk(self, text: str, memory: Memory, turn: Turn) -> str | None:
        low = text.lower()
        name = f", {memory.name}" if memory.name else ""
        if re.search(r"\b(thank you|thanks|cheers)\b", low):
            return f"You're welcome{name}!"
        if re.search(r"\b(bye|goodbye|see you|good night)\b", low):
            return f"Goodbye{name}! It was nice talking with you."
        if re.search(r"\bhow are you\b", low):
            return f"I'm doing well, thanks for asking{name}! How can I help?"
        if re.search(
            r"\b(who|what) are you\b|\bwhat can you do\b|\bhelp\b|\bare you (an? )?ai\b", low
        ):
            return self._introduction()
        if re.search(r"\bwhat(?:'s| is) your name\b|\bwho am i (talking|speaking) to\b", low):
            return "I don't have a name. I'm the offline assistant that runs on this server."
        if re.search(r"\b(joke|make me laugh|something funny)\b", low):
            told = sum(1 for h in turn.history if h.get("role") == "assistant")
            return JOKES[told % len(JOKES)]
        if re.search(r"\b(weather|news|score|stock|price)\b", low):
            return (
                "I can't look that up: I'm running offline, with no internet access and no AI "
                "model. If this app gives me a tool for it, I'll use it."
            )
        if re.match(r"(hi|hello|hey|good (morning|afternoon|evening))\b", low):
            if sum(1 for h in turn.history if h.get("role") == "assistant") == 0:
                return f"Hello{name}! " + self._introduction()
            return f"Hello again{name}! What can I do for you?"
        return None

    def _fallback(self, text: str, turn: Turn) -> str:
        shown = text if len(text) <= 80 else text[:77] + "..."
        if sum(1 for h in turn.history if h.get("role") == "assistant") % 2 == 0:
            return (
                f"I heard: {shown}. I'm running offline without an AI model, so I can't answer "
                f"that properly. {CAPABILITIES}"
            )
        return (
            "Sorry, that's beyond me: I'm a simple offline assistant with no AI model. "
            "Try asking me what time it is, or what twelve times seven is."
        )
