"""factory_boy factories for the models, bound to the test's session by `use_session`.

For setting up data in bulk or in states the API does not create directly; tests of
behaviour drive the API itself (tests/helpers.py).
"""

from __future__ import annotations

from datetime import timedelta

import factory
from factory.alchemy import SQLAlchemyModelFactory
from sqlalchemy.orm import Session

from commerce.chat.models import Conversation, Customer
from commerce.db import utcnow
from commerce.ids import new_id
from commerce.merchants.models import Merchant, MerchantMid
from commerce.offers.models import Offer
from commerce.sales.models import Sale
from commerce.sales.states import SaleState


class _Base(SQLAlchemyModelFactory):
    class Meta:
        abstract = True
        sqlalchemy_session_persistence = "flush"


class MerchantFactory(_Base):
    class Meta:
        model = Merchant

    id = factory.LazyFunction(lambda: new_id("merchant"))
    name = factory.Sequence(lambda n: f"Merchant {n}")
    timezone = "UTC"
    mids = factory.LazyFunction(lambda: [MerchantMid(mid=new_id("merchant")[-15:])])


class CustomerFactory(_Base):
    class Meta:
        model = Customer

    id = factory.LazyFunction(lambda: new_id("customer"))
    channel = "messenger"
    channel_user_id = factory.Sequence(lambda n: f"psid-{n}")


class ConversationFactory(_Base):
    class Meta:
        model = Conversation

    id = factory.LazyFunction(lambda: new_id("conversation"))
    merchant_id = factory.LazyAttribute(lambda o: MerchantFactory().id)
    customer_id = factory.LazyAttribute(lambda o: CustomerFactory().id)
    channel = "messenger"
    thread_id = factory.Sequence(lambda n: f"thread-{n}")


class OfferFactory(_Base):
    class Meta:
        model = Offer
        exclude = ("conversation",)

    id = factory.LazyFunction(lambda: new_id("offer"))
    conversation = factory.SubFactory(ConversationFactory)
    conversation_id = factory.LazyAttribute(lambda o: o.conversation.id)
    merchant_id = factory.LazyAttribute(lambda o: o.conversation.merchant_id)
    title = factory.Sequence(lambda n: f"Offer {n}")
    amount = 1250
    currency = "USD"
    quantity = 1


class SaleFactory(_Base):
    """A sale row in a given state, with no history: for lists and pagination only."""

    class Meta:
        model = Sale
        exclude = ("conversation", "offer")

    id = factory.LazyFunction(lambda: new_id("sale"))
    conversation = factory.SubFactory(ConversationFactory)
    offer = factory.SubFactory(OfferFactory, conversation=factory.SelfAttribute("..conversation"))
    offer_id = factory.LazyAttribute(lambda o: o.offer.id)
    merchant_id = factory.LazyAttribute(lambda o: o.conversation.merchant_id)
    conversation_id = factory.LazyAttribute(lambda o: o.conversation.id)
    customer_id = factory.LazyAttribute(lambda o: o.conversation.customer_id)
    amount = factory.LazyAttribute(lambda o: o.offer.amount)
    currency = factory.LazyAttribute(lambda o: o.offer.currency)
    quantity = 1
    state = SaleState.PENDING_PAYMENT.value
    created_at = factory.Sequence(lambda n: utcnow() - timedelta(minutes=n))


ALL = (
    MerchantFactory,
    CustomerFactory,
    ConversationFactory,
    OfferFactory,
    SaleFactory,
)


def use_session(session: Session) -> None:
    for model_factory in ALL:
        model_factory._meta.sqlalchemy_session = session
