"""Strict JSON: the parsing rules for every body that comes in, through the API or a webhook door.

Python's json module accepts NaN and Infinity, keeps the last of duplicate keys,
and lets a lone surrogate or a NUL through to the database, where it turns into
an error. Here each of those is a `BodyError` naming the problem.
"""

from __future__ import annotations

import json
from typing import Any

#: Deeper documents are refused; no request of this API nests more than a few levels.
MAX_DEPTH = 32
#: Integers longer than this are refused before Python spends time converting them.
MAX_INT_DIGITS = 30


class BodyError(ValueError):
    """The body is not acceptable JSON; `status` is 400 or 415."""

    def __init__(self, detail: str, status: int = 400) -> None:
        super().__init__(detail)
        self.detail = detail
        self.status = status


def _reject_constant(name: str) -> Any:
    raise BodyError(f"{name} is not a number this API accepts.")


def _parse_int(text: str) -> int:
    if len(text.lstrip("-")) > MAX_INT_DIGITS:
        raise BodyError("A number in the body is too large.")
    return int(text)


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise BodyError(f"The key {key!r} appears twice in one object.")
        result[key] = value
    return result


def _check_text(value: str) -> None:
    if "\x00" in value:
        raise BodyError("Text must not contain NUL characters.")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise BodyError("Text must not contain unpaired surrogate escapes.") from None


def _check_tree(document: Any) -> None:
    """Depth and text checks, iteratively, so a hostile document cannot exhaust the stack."""
    stack: list[tuple[Any, int]] = [(document, 1)]
    while stack:
        node, depth = stack.pop()
        if depth > MAX_DEPTH:
            raise BodyError(f"The body nests deeper than {MAX_DEPTH} levels.")
        if isinstance(node, dict):
            for key, value in node.items():
                _check_text(key)
                stack.append((value, depth + 1))
        elif isinstance(node, list):
            stack.extend((item, depth + 1) for item in node)
        elif isinstance(node, str):
            _check_text(node)


def loads_strict(data: bytes) -> Any:
    if data.startswith(b"\xef\xbb\xbf"):
        raise BodyError("The body must not start with a byte-order mark.")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise BodyError("The body is not valid UTF-8.") from None
    # Depth is checked before the C parser recurses: count brackets cheaply first.
    depth = 0
    in_string = escaped = False
    for char in text:
        if in_string:
            if escaped:
                escaped = False
            elif char == "\\":
                escaped = True
            elif char == '"':
                in_string = False
        elif char == '"':
            in_string = True
        elif char in "[{":
            depth += 1
            if depth > MAX_DEPTH:
                raise BodyError(f"The body nests deeper than {MAX_DEPTH} levels.")
        elif char in "]}":
            depth -= 1
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
