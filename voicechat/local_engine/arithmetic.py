"""Spoken arithmetic for the offline responder: "what is twelve times 7" -> 84."""

import math
import re

_UNITS = {
    w: i
    for i, w in enumerate(
        "zero one two three four five six seven eight nine ten eleven twelve thirteen "
        "fourteen fifteen sixteen seventeen eighteen nineteen".split()
    )
}
_UNITS["oh"] = 0
_TENS = {
    w: 10 * i
    for i, w in enumerate("_ _ twenty thirty forty fifty sixty seventy eighty ninety".split())
    if w != "_"
}
_SCALES = {"hundred": 100, "thousand": 1000, "million": 1_000_000, "billion": 1_000_000_000}
_BINARY = {
    "plus": "+",
    "+": "+",
    "add": "+",
    "and": "+",
    "minus": "-",
    "-": "-",
    "less": "-",
    "subtract": "-",
    "times": "*",
    "x": "*",
    "*": "*",
    "multiplied": "*",
    "multiply": "*",
    "divided": "/",
    "over": "/",
    "/": "/",
    "divide": "/",
    "power": "^",
    "^": "^",
}
_FILLER = {
    "by",
    "to",
    "the",
    "of",
    "what",
    "is",
    "whats",
    "what's",
    "how",
    "much",
    "calculate",
    "compute",
    "equals",
    "equal",
    "please",
    "tell",
    "me",
    "can",
    "you",
    "does",
    "do",
    "make",
    "makes",
    "a",
    "an",
    "result",
    "raised",
    "sum",
    "product",
}


class NotArithmetic(ValueError):
    """The text is not a sum the responder can do."""


def _tokens(text: str) -> list[str]:
    text = text.lower().replace("what's", "what is").replace("-", " - ")
    text = re.sub(r"(\d),(\d{3})", r"\1\2", text)
    return re.findall(r"\d+(?:\.\d+)?|[a-z']+|[+*/^x-]", text)


def _read_number(tokens: list[str], i: int) -> tuple[float | None, int]:
    """A number written in digits or words starting at tokens[i]; returns (value, next index)."""
    if i < len(tokens) and re.fullmatch(r"\d+(?:\.\d+)?", tokens[i]):
        return float(tokens[i]), i + 1
    total, current, seen = 0, 0, False
    while i < len(tokens):
        word = tokens[i]
        if word in _UNITS:
            current += _UNITS[word]
        elif word in _TENS:
            current += _TENS[word]
        elif word == "hundred" and seen:
            current *= 100
        elif word in _SCALES and seen:
            total += current * _SCALES[word]
            current = 0
        elif word == "and" and seen and i + 1 < len(tokens) and tokens[i + 1] in _UNITS | _TENS:
            pass  # "one hundred and five"
        else:
            break
        seen = True
        i += 1
    if not seen:
        return None, i
    value = float(total + current)
    if i + 1 < len(tokens) and tokens[i] == "point" and tokens[i + 1] in _UNITS:
        digits = ""
        i += 1
        while i < len(tokens) and tokens[i] in _UNITS and _UNITS[tokens[i]] < 10:
            digits += str(_UNITS[tokens[i]])
            i += 1
        value += float("0." + digits)
    return value, i


def parse(text: str) -> tuple[list[float], list[str]]:
    """Numbers and operators in the order spoken; raises NotArithmetic."""
    tokens = _tokens(text)
    numbers: list[float] = []
    ops: list[str] = []
    i = 0
    negate_next = False
    prefix = tokens[0] if tokens[:1] in (["add"], ["subtract"], ["multiply"], ["divide"]) else None
    unary = False  # squared / cubed / square root: a sum even without a binary operator
    while i < len(tokens):
        word = tokens[i]
        value, j = _read_number(tokens, i)
        if value is not None:
            if len(numbers) > len(ops):
                raise NotArithmetic(text)  # two numbers in a row: not a sum
            numbers.append(-value if negate_next else value)
            negate_next = False
            i = j
            continue
        if word in ("squared", "cubed") and numbers:
            numbers[-1] = numbers[-1] ** (2 if word == "squared" else 3)
            unary = True
        elif word == "root" and tokens[i - 1 : i] == ["square"]:
            value, j = _read_number(tokens, i + 1 + (tokens[i + 1 : i + 2] == ["of"]))
            if value is None or value < 0:
                raise NotArithmetic(text)
            numbers.append(math.sqrt(value))
            unary = True
            i = j
            continue
        elif word in ("by", "and", "to", "from") and prefix and len(numbers) > len(ops):
            ops.append(_BINARY[prefix])  # "multiply 6 by 7", "add 3 and 4", "subtract 3 from 10"
        elif word in _BINARY:
            if len(numbers) == len(ops):
                if word in ("-", "minus") and len(numbers) == 0:
                    negate_next = True
                elif word not in ("add", "subtract", "multiply", "divide", "and"):
                    raise NotArithmetic(text)
            else:
                ops.append(_BINARY[word])
        elif word not in _FILLER and word not in ("square", "point", "negative"):
            raise NotArithmetic(text)
        elif word == "negative":
            negate_next = True
        i += 1
    if (not ops and not unary) or len(numbers) != len(ops) + 1:
        raise NotArithmetic(text)
    if tokens[:1] == ["subtract"] and "from" in tokens:
        numbers.reverse()  # "subtract 3 from 10"
    return numbers, ops


def evaluate(numbers: list[float], ops: list[str]) -> float:
    """Left to right, with ^ then * / before + -."""
    for group in ("^", "*/", "+-"):
        nums, rest = [numbers[0]], []
        for op, n in zip(ops, numbers[1:], strict=True):
            if op in group:
                a = nums.pop()
                if op == "^":
                    if abs(n) > 64:
                        raise OverflowError
                    nums.append(a**n)
                elif op == "*":
                    nums.append(a * n)
                elif op == "/":
                    nums.append(a / n)  # ZeroDivisionError is the caller's to phrase
                elif op == "+":
                    nums.append(a + n)
                else:
                    nums.append(a - n)
            else:
                nums.append(n)
                rest.append(op)
        numbers, ops = nums, rest
    return numbers[0]


def say_number(value: float) -> str:
    if value != value or math.isinf(value):
        raise OverflowError
    if abs(value - round(value)) < 1e-9:
        text = str(int(round(value)))
    else:
        text = f"{value:.4f}".rstrip("0").rstrip(".")
    return text.replace("-", "minus ") if text.startswith("-") else text


_SPOKEN_OP = {"+": "plus", "-": "minus", "*": "times", "/": "divided by", "^": "to the power of"}


def say_expression(numbers: list[float], ops: list[str]) -> str:
    parts = [say_number(numbers[0])]
    for op, n in zip(ops, numbers[1:], strict=True):
        parts += [_SPOKEN_OP[op], say_number(n)]
    return " ".join(parts)
