"""Partner data is read through one path that takes a purpose (commerce/partnerdata.py).

This walks the source of the product and fails on any other code that selects from the
partner-data tables, so a read path added later without a purpose cannot pass the suite.
Writers and the deletion cascade are listed by name, each with the reason it may touch
the tables.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from commerce import partnerdata
from commerce.cards.models import CardTransaction
from commerce.errors import InvalidInput

ROOT = Path(__file__).resolve().parents[1]
PARTNER_MODELS = {"CardTransaction", "BalanceSnapshot"}
ALLOWED = {
    # The read path itself.
    "commerce/partnerdata.py": "reads with a purpose and audits",
    # A cardholder's export: reads through partnerdata.read with the data-rights purpose.
    "commerce/consent/rights.py": "exports through the read path, audited",
    # Fraud alerts and balances in chat: they read only through partnerdata.read, with the
    # purposes fraud_alerts and balance_display; the model is named as read's argument.
    "commerce/alerts/services.py": "judges and tells transactions through the read path",
    "commerce/alerts/balances.py": "tells balances through the read path",
    # Writers: they insert a row and read back the one they wrote.
    "commerce/cards/transactions.py": "stores a partner notification",
    "commerce/consent/services.py": "stores a balance snapshot",
    # Deletion: removes rows, never returns them.
    "commerce/consent/cascade.py": "deletes what consent or agreement no longer covers",
    # Definitions.
    "commerce/cards/models.py": "the model",
    "commerce/consent/models.py": "the model",
    "commerce/models.py": "imports every model",
}


def _product_files():
    for package in ("app", "commerce", "webhooks"):
        yield from sorted((ROOT / package).rglob("*.py"))


def _uses(tree: ast.AST) -> set[str]:
    return {
        node.id
        for node in ast.walk(tree)
        if isinstance(node, ast.Name) and node.id in PARTNER_MODELS
    } | {
        node.attr
        for node in ast.walk(tree)
        if isinstance(node, ast.Attribute) and node.attr in PARTNER_MODELS
    }


def test_no_other_code_reads_partner_data():
    offenders = []
    for path in _product_files():
        relative = path.relative_to(ROOT).as_posix()
        if relative in ALLOWED:
            continue
        used = _uses(ast.parse(path.read_text(), relative))
        if used:
            offenders.append(f"{relative} uses {', '.join(sorted(used))}")
    assert not offenders, (
        "partner data must be read through commerce.partnerdata.read(purpose=...):\n"
        + "\n".join(offenders)
    )


def test_the_walk_would_catch_a_new_read_path():
    sneaky = ast.parse(
        "from commerce.cards.models import CardTransaction\n"
        "def report(session):\n"
        "    return session.scalars(select(CardTransaction)).all()\n"
    )
    assert _uses(sneaky) == {"CardTransaction"}


def test_a_read_needs_a_known_purpose(db):
    with pytest.raises(InvalidInput):
        partnerdata.read(db, CardTransaction, purpose="advertising", actor="test")
