"""Schema building blocks shared by the resources: text, money, times, pages."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import iso4217
from marshmallow import Schema, ValidationError, fields, validate

from commerce import money
from commerce.errors import InvalidInput
from commerce.instants import utc_text
from commerce.pagination import DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE


class Text(fields.String):
    """A string with a length bound; control characters other than newline and tab refused."""

    #: What the document promises (JSON Schema `pattern`), the same rule as `_deserialize`.
    PATTERN = "^[^\\u0000-\\u0008\\u000b-\\u001f]*$"

    def __init__(self, *, max_length: int, min_length: int = 1, **kwargs: Any) -> None:
        kwargs["metadata"] = {"pattern": self.PATTERN, **kwargs.get("metadata", {})}
        super().__init__(validate=validate.Length(min=min_length, max=max_length), **kwargs)

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> str:
        text = super()._deserialize(value, attr, data, **kwargs)
        if any(ord(c) < 32 and c not in "\n\t" for c in text):
            raise ValidationError("Must not contain control characters.")
        return text


class Identifier(Text):
    """An opaque token from another system (thread ids, page ids, MIDs): printable ASCII."""

    PATTERN = "^[!-~]*$"

    def __init__(self, *, max_length: int = 128, **kwargs: Any) -> None:
        super().__init__(max_length=max_length, **kwargs)

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> str:
        text = super()._deserialize(value, attr, data, **kwargs)
        if not (text.isascii() and text.isprintable()) or " " in text:
            raise ValidationError("Must be printable ASCII without spaces.")
        return text


class Amount(fields.Integer):
    """Minor units: a positive integer; floats, strings and booleans are refused."""

    def __init__(self, **kwargs: Any) -> None:
        kwargs.setdefault(
            "metadata", {"description": "Amount in the currency's minor unit (cents for USD)."}
        )
        super().__init__(
            strict=True, validate=validate.Range(min=1, max=money.MAX_AMOUNT), **kwargs
        )

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> int:
        if isinstance(value, bool):
            raise ValidationError("Not a valid integer.")
        return super()._deserialize(value, attr, data, **kwargs)


def _currency_codes() -> list[str]:
    """Every code `money.currency` accepts, in upper case: the document's enum."""
    codes = set()
    for entry in iso4217.Currency:
        try:
            codes.add(money.currency(entry.code).code)
        except InvalidInput:
            continue
    return sorted(codes)


class CurrencyCode(fields.String):
    """A current ISO 4217 code, upper-cased on the way in."""

    def __init__(self, **kwargs: Any) -> None:
        kwargs.setdefault(
            "metadata",
            {
                "description": "ISO 4217 alphabetic code of a current currency with a minor "
                "unit; lower case is accepted too.",
                "enum": _currency_codes(),
            },
        )
        super().__init__(**kwargs)

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> str:
        code = super()._deserialize(value, attr, data, **kwargs)
        try:
            return money.currency(code).code
        except InvalidInput as exc:
            raise ValidationError(next(iter(exc.errors.values()))) from None


class Timestamp(fields.AwareDateTime):
    """RFC 3339 with an offset on the way in; UTC with a `Z` on the way out.

    On the way in the year, as written, is 1970 to 9899: a rule the document states as a
    pattern on the fields a request sends (those declared `required` or with a
    `load_default`), and one that leaves room for any offset, so converting to UTC cannot
    overflow.
    """

    PATTERN = "^(19[7-9][0-9]|[2-8][0-9]{3}|9[0-8][0-9]{2})-"
    MESSAGE = "Must be a time between the years 1970 and 9899."

    def __init__(self, **kwargs: Any) -> None:
        if "required" in kwargs or "load_default" in kwargs:
            kwargs["metadata"] = {"pattern": self.PATTERN, **kwargs.get("metadata", {})}
        super().__init__(format="iso", **kwargs)

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> datetime:
        parsed = super()._deserialize(value, attr, data, **kwargs)
        if not 1970 <= parsed.year <= 9899:
            raise ValidationError(self.MESSAGE)
        return parsed.astimezone(UTC)

    def _serialize(self, value: datetime | None, attr: str | None, obj: Any, **kwargs: Any) -> Any:
        if value is None:
            return None
        return utc_text(value)


class PageQuerySchema(Schema):
    limit = fields.Integer(
        load_default=DEFAULT_PAGE_SIZE, validate=validate.Range(min=1, max=MAX_PAGE_SIZE)
    )
    cursor = fields.String(
        load_default=None,
        validate=validate.Length(max=512),
        metadata={
            "description": "The `next_cursor` of the previous page, as this API returned it; "
            "any other value is refused (400)."
        },
    )


def page_of(item_schema: type[Schema]) -> type[Schema]:
    """A list response: `data` and the cursor of the next page (null on the last one)."""
    return Schema.from_dict(
        {
            "data": fields.List(fields.Nested(item_schema)),
            "next_cursor": fields.String(allow_none=True),
        },
        name=item_schema.__name__.removesuffix("Schema") + "PageSchema",
    )
