"""Consent, agreements and purposes, enforced by the code: the read path, the cascade,
receipts, aliases, export and erasure."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import select, text

from commerce import partnerdata
from commerce.audit.models import AuditEntry
from commerce.cards.models import CardTransaction, MerchantCardAlias
from commerce.cards.services import card_ref_for, merchant_alias
from commerce.cards.transactions import record_card_transaction
from commerce.consent.cascade import sweep
from commerce.consent.models import DeletionReceipt
from tests.helpers import OPERATOR, open_shop

NOW = datetime.now(UTC)


def _partner(
    client, *, purposes=("sales_attribution", "fraud_alerts"), ends_at=None, retention_days=30
):
    partner = client.post("/v1/partners", json={"name": "Bank"}, headers=OPERATOR).json
    agreement = client.post(
        f"/v1/partners/{partner['id']}/agreements",
        json={
            "scopes": ["transactions", "balances"],
            "purposes": list(purposes),
            "starts_at": (NOW - timedelta(days=10)).isoformat(),
            "ends_at": ends_at.isoformat() if ends_at else None,
            "retention_days": retention_days,
        },
        headers=OPERATOR,
    )
    assert agreement.status_code == 201, agreement.json
    return partner, agreement.json


def _consent(
    client,
    partner,
    customer_ref="cust_1",
    *,
    status="granted",
    purposes=("sales_attribution", "fraud_alerts"),
    expires_at=None,
    chat=None,
):
    answer = client.post(
        f"/v1/partners/{partner['id']}/consents",
        json={
            "customer_ref": customer_ref,
            "status": status,
            "scopes": ["transactions"],
            "purposes": list(purposes),
            "expires_at": expires_at.isoformat() if expires_at else None,
            **({"chat": chat} if chat else {}),
        },
        headers=OPERATOR,
    )
    assert answer.status_code == 201, answer.json
    return answer.json


def _transaction(
    db,
    partner,
    customer_ref="cust_1",
    *,
    purposes=("sales_attribution",),
    transaction_id="txn_1",
    mid="000123456789012",
):
    return record_card_transaction(
        db,
        partner_id=partner["id"],
        kind="authorized",
        data={
            "transaction_id": transaction_id,
            "customer_ref": customer_ref,
            "card": {"token": "tok_1", "brand": "visa", "last4": "4242"},
            "merchant": {"mid": mid, "name": "Blue Bottle"},
            "amount": 1250,
            "currency": "USD",
        },
        occurred_at=NOW,
        purposes=purposes,
    )


def _read(db, purpose):
    return partnerdata.read(db, CardTransaction, purpose=purpose, actor="test")


def test_a_read_gets_only_data_stored_for_its_purpose_and_is_audited(client, db):
    partner, _ = _partner(client)
    _consent(client, partner)
    _transaction(db, partner, purposes=("sales_attribution",))
    assert len(_read(db, "sales_attribution")) == 1
    assert _read(db, "fraud_alerts") == []
    assert _read(db, "balance_display") == []
    reads = db.scalars(select(AuditEntry).where(AuditEntry.action == "partner_data.read")).all()
    assert [(r.purpose, r.detail["rows"]) for r in reads] == [
        ("sales_attribution", 1),
        ("fraud_alerts", 0),
        ("balance_display", 0),
    ]


def test_a_staged_read_is_audited_with_the_rows_it_copied(client, db):
    partner, _ = _partner(client)
    _consent(client, partner)
    _transaction(db, partner, purposes=("sales_attribution",))
    copied = partnerdata.stage_transactions(
        db, into="staged_for_test", purpose="sales_attribution", actor="test"
    )
    none = partnerdata.stage_transactions(
        db, into="staged_for_none", purpose="fraud_alerts", actor="test"
    )
    assert (copied, none) == (1, 0)
    assert db.execute(text("SELECT count(*) FROM staged_for_test")).scalar_one() == 1
    reads = db.scalars(select(AuditEntry).where(AuditEntry.action == "partner_data.read")).all()
    assert [(r.purpose, r.detail["rows"], r.detail["into"]) for r in reads] == [
        ("sales_attribution", 1, "staged_for_test"),
        ("fraud_alerts", 0, "staged_for_none"),
    ]


def test_a_purpose_the_consent_does_not_give_is_not_readable(client, db):
    partner, _ = _partner(client)
    _consent(client, partner, purposes=("fraud_alerts",))
    _transaction(db, partner, purposes=("sales_attribution", "fraud_alerts"))
    assert _read(db, "sales_attribution") == []
    assert len(_read(db, "fraud_alerts")) == 1


def test_revoking_a_consent_deletes_its_data_with_a_receipt(client, db):
    partner, _ = _partner(client)
    _consent(client, partner)
    _transaction(db, partner, transaction_id="txn_a")
    _transaction(db, partner, transaction_id="txn_b")
    _consent(client, partner, status="revoked")
    assert db.scalars(select(CardTransaction)).all() == []
    receipt = db.scalars(select(DeletionReceipt)).one()
    assert receipt.reason == "consent_revoked"
    assert receipt.counts == {"card_transactions": 2}
    receipts = client.get("/v1/deletion-receipts", headers=OPERATOR).json["data"]
    assert [r["id"] for r in receipts] == [receipt.id]


def test_an_expired_consent_stops_reads_at_once_and_the_sweep_deletes(client, db):
    partner, _ = _partner(client)
    _consent(client, partner, expires_at=NOW + timedelta(hours=1))
    _transaction(db, partner)
    assert len(_read(db, "sales_attribution")) == 1
    later = NOW + timedelta(hours=2)
    rows = db.scalars(
        select(CardTransaction).where(
            partnerdata.usable(CardTransaction, "sales_attribution", at=later)
        )
    ).all()
    assert rows == []
    (receipt,) = sweep(db, now=later)
    assert receipt.reason == "consent_expired"
    assert db.scalars(select(CardTransaction)).all() == []


def test_an_agreement_that_ended_cuts_the_data_with_a_receipt(client, db):
    partner, _ = _partner(client, ends_at=NOW + timedelta(days=1))
    _consent(client, partner)
    _transaction(db, partner)
    (receipt,) = sweep(db, now=NOW + timedelta(days=2))
    assert (receipt.reason, receipt.counts) == ("agreement_ended", {"card_transactions": 1})


def test_terminating_an_agreement_deletes_at_once(client, db):
    partner, agreement = _partner(client)
    _consent(client, partner)
    _transaction(db, partner)
    answer = client.post(
        f"/v1/partners/{partner['id']}/agreements/{agreement['id']}/terminate", headers=OPERATOR
    )
    assert answer.status_code == 200, answer.json
    assert answer.json["receipt"]["reason"] == "agreement_ended"
    assert db.scalars(select(CardTransaction)).all() == []


def test_data_past_retention_is_deleted(client, db):
    partner, _ = _partner(client, retention_days=30)
    _consent(client, partner)
    _transaction(db, partner)
    assert sweep(db, now=NOW + timedelta(days=29)) == []
    (receipt,) = sweep(db, now=NOW + timedelta(days=31))
    assert receipt.reason == "retention"


def test_two_merchants_see_different_aliases_for_one_card(client, db):
    first, second = open_shop(client), open_shop(client)
    card = card_ref_for(
        db, kind="stripe_fingerprint", value="fp_same_card", brand="visa", last4="4242"
    )
    a = merchant_alias(db, merchant_id=first.merchant["id"], card_ref_id=card.id)
    b = merchant_alias(db, merchant_id=second.merchant["id"], card_ref_id=card.id)
    assert a != b
    assert a.startswith("card_")
    assert b.startswith("card_")
    assert merchant_alias(db, merchant_id=first.merchant["id"], card_ref_id=card.id) == a
    assert len(db.scalars(select(MerchantCardAlias)).all()) == 2


def test_export_and_erasure(client, db, stripe):
    shop = open_shop(client)
    customer_id = shop.conversation["customer_id"]
    user_id = client.get(f"/v1/conversations/{shop.conversation['id']}", headers=shop.headers).json[
        "thread_id"
    ]
    sale = client.post(f"/v1/offers/{shop.offer['id']}/checkout", headers=shop.headers).json
    partner, _ = _partner(client)
    _consent(client, partner, chat={"channel": "messenger", "user_id": "ignored"})

    exported = client.get(f"/v1/customers/{customer_id}/export", headers=OPERATOR)
    assert exported.status_code == 200, exported.json
    body = exported.json
    assert body["customer"]["id"] == customer_id
    assert [s["id"] for s in body["sales"]] == [sale["sale"]["id"]]
    assert body["conversations"][0]["thread_id"] == user_id

    erased = client.delete(f"/v1/customers/{customer_id}", headers=OPERATOR)
    assert erased.status_code == 200, erased.json
    assert erased.json["reason"] == "erasure"
    # The merchant keeps the sale; the person is gone from it.
    kept = client.get(f"/v1/sales/{sale['sale']['id']}", headers=shop.headers)
    assert kept.status_code == 200
    conversation = client.get(
        f"/v1/conversations/{shop.conversation['id']}", headers=shop.headers
    ).json
    assert conversation["thread_id"].startswith("erased:")
    assert client.get(f"/v1/customers/{customer_id}/export", headers=OPERATOR).status_code == 404
    actions = db.scalars(select(AuditEntry.action)).all()
    assert "customer.export" in actions
    assert "customer.erase" in actions


@pytest.mark.parametrize("purpose", ["advertising", "third_party", ""])
def test_no_purpose_outside_the_three(db, purpose):
    from commerce.errors import InvalidInput

    with pytest.raises(InvalidInput):
        _read(db, purpose)


def test_key_rotation_keeps_every_link(client, db):
    """A card hashed under v1, re-keyed to v2 without its number, is still the card a PAN
    sent after the rotation names; the stored hash no longer equals the v1 hash."""
    import base64

    from app.config import CardKey
    from commerce.cards.keys import rotate
    from commerce.cards.models import CardAlias
    from commerce.cards.scrub import CardHasher, scrub

    v1 = CardKey("v1", base64.b64decode(base64.b64encode(b"1" * 32)))
    v2 = CardKey("v2", b"2" * 32)
    partner, _ = _partner(client)
    _consent(client, partner)
    pan = "4000 0566 5566 5556"

    def send(hasher, transaction_id):
        card = scrub({"data": {"card": {"pan": pan}}}, hasher=hasher).document["data"]["card"]
        return record_card_transaction(
            db,
            partner_id=partner["id"],
            kind="authorized",
            data={
                "transaction_id": transaction_id,
                "customer_ref": "cust_1",
                "card": card,
                "amount": 100,
                "currency": "USD",
            },
            occurred_at=NOW,
            purposes=("sales_attribution",),
        )

    before = send(CardHasher([v1]), "txn_before")
    old_value = db.scalars(select(CardAlias.value).where(CardAlias.kind == "pan_hash")).one()
    assert rotate(db, CardHasher([v2, v1])) == 1
    alias = db.scalars(select(CardAlias).where(CardAlias.kind == "pan_hash")).one()
    assert alias.key_version == "v2<v1"
    assert alias.value != old_value
    assert alias.card_ref_id == before.card_ref_id
    after = send(CardHasher([v2, v1]), "txn_after")
    assert after.card_ref_id == before.card_ref_id
    assert rotate(db, CardHasher([v2, v1])) == 0  # nothing left under an older key


def test_a_consent_links_the_aliases_of_each_card_it_lists(client, db):
    from commerce.cards.models import CardAlias

    partner, _ = _partner(client)
    answer = client.post(
        f"/v1/partners/{partner['id']}/consents",
        json={
            "customer_ref": "cust_7",
            "status": "granted",
            "scopes": ["transactions"],
            "purposes": ["fraud_alerts"],
            "cards": [{"token": "tok_77", "par": "PAR777", "brand": "visa", "last4": "1111"}],
        },
        headers=OPERATOR,
    )
    assert answer.status_code == 201
    refs = db.execute(select(CardAlias.kind, CardAlias.card_ref_id)).all()
    assert {kind for kind, _ in refs} == {"par", "partner_token"}
    assert len({ref for _, ref in refs}) == 1
    # A transaction naming only the token is the same card as one naming only the PAR.
    by_token = record_card_transaction(
        db,
        partner_id=partner["id"],
        kind="authorized",
        data={
            "transaction_id": "t1",
            "customer_ref": "cust_7",
            "card": {"token": "tok_77"},
            "amount": 100,
            "currency": "USD",
        },
        occurred_at=NOW,
        purposes=("fraud_alerts",),
    )
    assert by_token.card_ref_id == refs[0][1]


def test_the_operator_sees_a_partner_flagged_for_sending_card_numbers(client, db):
    from commerce.partners.services import flag_pan

    partner, _ = _partner(client)
    flag_pan(db, partner["id"], 2)
    db.flush()
    shown = client.get(f"/v1/partners/{partner['id']}", headers=OPERATOR).json
    assert shown["pan_reports"] == 2
