"""The built-in offline responder: what it can answer, and how honestly."""

import json

import pytest

from voicechat.local_engine.offline import OfflineResponder
from voicechat.local_engine.responder import FunctionCall, Turn, chat_messages


def ask(*user_texts: str, tools=(), tool_choice="auto") -> str | FunctionCall:
    """The reply to the last of `user_texts`, with the others as earlier user turns."""
    history = [{"role": "user", "text": t} for t in user_texts]
    return OfflineResponder().reply(Turn("", history, tools=list(tools), tool_choice=tool_choice))


@pytest.mark.parametrize(
    ("question", "answer"),
    [
        ("What is 12 times 7?", "12 times 7 is 84."),
        ("what is twelve times seven", "12 times 7 is 84."),
        ("what's three plus four times two", "3 plus 4 times 2 is 11."),
        ("add 3 and 4", "3 plus 4 is 7."),
        ("subtract 3 from 10", "10 minus 3 is 7."),
        ("multiply six by seven", "6 times 7 is 42."),
        ("one hundred and five divided by five", "105 divided by 5 is 21."),
        ("what is the square root of sixteen", "That's 4."),
        ("two to the power of ten", "2 to the power of 10 is 1024."),
        ("what is 7 divided by 2", "7 divided by 2 is 3.5."),
        (
            "what is ten divided by zero",
            "Dividing by zero isn't defined, so there's no answer to give.",
        ),
    ],
)
def test_arithmetic(question, answer):
    assert ask(question) == answer


def test_memory_of_facts_stated_earlier():
    said = ["My name is Ada and I live in Paris.", "My favorite color is blue."]
    assert ask(*said, "What is my name?") == "Your name is Ada."
    assert ask(*said, "Where do I live?") == "You told me you live in Paris."
    assert ask(*said, "What is my favorite color?") == "Your favorite color is blue."
    assert ask(*said, "what did I just say") == 'You said: "My favorite color is blue.".'
    assert "haven't told me your name" in ask("What is my name?")
    # A later statement wins.
    assert ask("my name is ada", "call me Grace", "who am i") == "Your name is Grace."
    assert ask("Hi, I'm Sam.", "What was my name again?") == "Your name is Sam."


def test_known_facts_are_told_to_the_model_in_one_sentence():
    turn = Turn(
        instructions="",
        history=[
            {"role": "user", "text": "Hi, I'm Sam."},
            {"role": "assistant", "text": "Hello Sam!"},
            {"role": "user", "text": "I live in Lyon and my favorite color is green."},
        ],
    )
    assert OfflineResponder().known_facts(turn) == (
        "What the user has told you: their name is Sam; their favorite color is green; "
        "they live in Lyon."
    )
    assert OfflineResponder().known_facts(Turn(instructions="", history=[])) == ""


def test_acknowledges_what_it_learns():
    assert ask("My name is Ada.") == "Nice to meet you, Ada!"
    assert ask("I live in new york") == "Got it, you live in New York."


def test_time_and_date(settings):
    assert ask("What time is it?").startswith("It's ")
    assert ask("What's the date today?").startswith("Today is ")


def test_honest_about_being_offline():
    hello = ask("Hello!")
    assert "no AI model" in hello and "offline" in hello
    unknown = ask("Write me a poem about autumn.")
    assert "I heard: Write me a poem about autumn" in unknown and "without an AI model" in unknown
    assert "didn't catch that" in ask("")
    assert "offline" in ask("What's the weather like?")  # no tool for it: says why
    assert "?" in ask("Tell me a joke")
    assert "don't have a name" in ask("What's your name?")


TOOLS = [
    {
        "type": "function",
        "name": "get_weather",
        "description": "Get the current weather for a city",
        "parameters": {
            "type": "object",
            "properties": {
                "city": {"type": "string"},
                "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
            },
            "required": ["city"],
        },
    },
    {
        "type": "function",
        "name": "set_timer",
        "description": "Start a countdown timer",
        "parameters": {"type": "object", "properties": {"minutes": {"type": "integer"}}},
    },
]


def test_tools_are_called_when_the_request_matches():
    call = ask("What's the weather in Oslo in fahrenheit?", tools=TOOLS)
    assert isinstance(call, FunctionCall) and call.name == "get_weather"
    assert json.loads(call.arguments) == {"city": "Oslo", "unit": "fahrenheit"}
    call = ask("please set a timer for 5 minutes", tools=TOOLS)
    assert (call.name, json.loads(call.arguments)) == ("set_timer", {"minutes": 5})
    assert isinstance(ask("what is 2 plus 2", tools=TOOLS), str)  # no tool matches
    assert isinstance(ask("weather in Oslo", tools=TOOLS, tool_choice="none"), str)
    forced = ask("hello", tools=TOOLS, tool_choice={"type": "function", "name": "set_timer"})
    assert forced.name == "set_timer"


def test_answers_from_the_tool_result():
    history = [
        {"role": "user", "text": "weather in Oslo"},
        {"type": "function_call", "call_id": "c1", "name": "get_weather", "arguments": "{}"},
        {
            "type": "function_call_output",
            "call_id": "c1",
            "output": json.dumps({"temperature": 3, "conditions": "snow"}),
        },
    ]
    reply = OfflineResponder().reply(Turn("", history, tools=TOOLS))
    assert reply == "Here's what get weather returned: temperature is 3, conditions is snow."
    history[-1]["output"] = json.dumps({"result": "Timer set."})
    assert OfflineResponder().reply(Turn("", history)) == "Get weather says: Timer set."


def test_chat_messages_for_an_llm_keep_tool_calls_paired():
    turn = Turn(
        "Be brief.",
        [
            {"role": "user", "text": "weather?"},
            {"type": "function_call", "call_id": "c1", "name": "w", "arguments": "{}"},
            {"type": "function_call", "call_id": "c2", "name": "w", "arguments": "{}"},
            {"type": "function_call_output", "call_id": "c1", "output": "1"},
            {"type": "function_call_output", "call_id": "c2", "output": "2"},
            {"type": "function_call_output", "call_id": "gone", "output": "3"},
        ],
    )
    messages = chat_messages(turn)
    assert messages[0] == {"role": "system", "content": "Be brief."}
    assert [c["id"] for c in messages[2]["tool_calls"]] == ["c1", "c2"]
    assert messages[3:5] == [
        {"role": "tool", "tool_call_id": "c1", "content": "1"},
        {"role": "tool", "tool_call_id": "c2", "content": "2"},
    ]
    assert messages[5] == {"role": "user", "content": "Tool result: 3"}
