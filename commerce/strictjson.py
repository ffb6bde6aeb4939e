"""Strict JSON: the parsing rules for every body that comes in, through the API or a webhook door.

Python's json module accepts NaN and Infinity, keeps the last of duplicate keys,
and lets a lone surrogate or a NUL through to the database, where it turns into
an error. Here each of those is a `BodyError` naming the problem.
"""

from __future__ import annotations

import json
from typing import Any

from commerce.cards.scrub import mask

#: Deeper documents are refused; no request of this API nests more than a few levels.
MAX_DEPTH = 32
#: Integers longer than this are refused before Python spends time converting them.
MAX_INT_DIGITS = 30


class BodyError(ValueError):
    """The body is not acceptable JSON; `status` is 400 or 415; `field` names where, if known."""

    def __init__(self, detail: str, status: int = 400, field: str | None = None) -> None:
        super().__init__(detail)
        self.detail = detail
        self.status = status
        self.field = field


class _Refused:
    """Stands where the parser met a value it refuses, so the tree walk can name its field."""

    __slots__ = ("reason",)

    def __init__(self, reason: str) -> None:
        self.reason = reason


def _reject_constant(name: str) -> Any:
    return _Refused(f"{name} is not a number this API accepts.")


def _parse_int(text: str) -> Any:
    if len(text.lstrip("-")) > MAX_INT_DIGITS:
        return _Refused("The number is too large.")
    return int(text)


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            # The key is masked: a card number typed as a key must not come back in the error.
            name = mask(key)
            raise BodyError(f"The key {name!r} appears twice in one object.", field=name)
        result[key] = value
    return result


def _text_problem(value: str) -> str | None:
    if "\x00" in value:
        return "Text must not contain NUL characters."
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return "Text must not contain unpaired surrogate escapes."
    return None


def _name(path: tuple[str | int, ...]) -> str:
    """`("items", 0, "amount")` -> `items.0.amount`; the top level is `body`."""
    return ".".join(str(part) for part in path) or "body"


def _check_tree(document: Any) -> None:
    """Depth, refused values and text, iteratively, so a hostile document cannot exhaust the
    stack; a problem is reported with the path of the field that holds it."""
    stack: list[tuple[Any, tuple[str | int, ...]]] = [(document, ())]
    while stack:
        node, path = stack.pop()
        if len(path) >= MAX_DEPTH:
            raise BodyError(f"The body nests deeper than {MAX_DEPTH} levels.")
        if isinstance(node, _Refused):
            raise BodyError(node.reason, field=_name(path))
        if isinstance(node, dict):
            for key, value in node.items():
                problem = _text_problem(key)
                if problem:
                    # The key itself is unprintable: name the object that holds it.
                    raise BodyError(f"A key: {problem}", field=_name(path))
                stack.append((value, (*path, key)))
        elif isinstance(node, list):
            stack.extend((item, (*path, index)) for index, item in enumerate(node))
        elif isinstance(node, str):
            problem = _text_problem(node)
            if problem:
                raise BodyError(problem, field=_name(path))


def loads_strict(data: bytes) -> Any:
    if data.startswith(b"\xef\xbb\xbf"):
        raise BodyError("The body must not start with a byte-order mark.")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise BodyError("The body is not valid UTF-8.") from None
    # Depth: the C parser guards its own recursion (RecursionError, caught below) and the
    # tree walk refuses anything deeper than MAX_DEPTH; no pre-scan of the text is needed.
    try:
        document = json.loads(
            text,
            parse_constant=_reject_constant,
            parse_int=_parse_int,
            object_pairs_hook=_no_duplicates,
        )
    except json.JSONDecodeError as exc:
        raise BodyError(f"The body is not valid JSON: {exc.msg} at position {exc.pos}.") from None
    except RecursionError:
        raise BodyError(f"The body nests deeper than {MAX_DEPTH} levels.") from None
    _check_tree(document)
    return document
