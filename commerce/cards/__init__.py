"""Card data: the one scrubber every inbound door uses, and keyed hashes of card numbers.

No card number (PAN) leaves this package in clear: `scrub` and `mask` replace them, and
`CardHasher` turns a PAN a partner should not have sent into an HMAC with a versioned key.
"""

from commerce.cards.scrub import (
    DEFAULT_CARD_FIELDS,
    CardFieldRule,
    CardHasher,
    CardKeyError,
    CardKeyLike,
    FieldPath,
    PanHash,
    PanLogFilter,
    PanMatch,
    ScrubResult,
    brand_of,
    card_fields,
    find_pans,
    is_secret_field,
    luhn_valid,
    mask,
    normalize_digits,
    paths,
    scrub,
)

__all__ = [
    "DEFAULT_CARD_FIELDS",
    "CardFieldRule",
    "CardHasher",
    "CardKeyError",
    "CardKeyLike",
    "FieldPath",
    "PanHash",
    "PanLogFilter",
    "PanMatch",
    "ScrubResult",
    "brand_of",
    "card_fields",
    "find_pans",
    "is_secret_field",
    "luhn_valid",
    "mask",
    "normalize_digits",
    "paths",
    "scrub",
]
