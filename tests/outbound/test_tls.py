"""The pinned connection over real TLS: a delivery resolves the endpoint's name once, checks
the address against the guard, connects to that address, and verifies the receiver's
certificate against the NAME (SNI and hostname check), never against the address.

The receiver is an HTTPS server on 127.0.0.1 with certificates made here by `trustme`. The
guard refuses loopback, so the test uses the seams the delivery code has for tests: the
policy that lets exactly this address and port through, a resolver that answers the
(unresolvable) `.test` name with it, and `send_pinned`'s `ca_bundle` to trust the test CA.
"""

from __future__ import annotations

import functools
import ssl
from collections.abc import Iterator

import pytest
import trustme
from sqlalchemy import select
from sqlalchemy.orm import Session

from commerce import runtime
from commerce.outbound import services
from commerce.outbound.guard import AddressPolicy
from commerce.outbound.models import WebhookAttempt, WebhookEndpoint
from tests.outbound.conftest import Hooked, emit
from tests.outbound.receiver import Receiver

NAME = "hooks.merchant.test"


class TlsReceiver:
    """`Receiver` behind TLS with the given certificate; records the SNI it was asked for."""

    def __init__(self, certificate: trustme.LeafCert) -> None:
        self.plain = Receiver()
        self.server_names: list[str | None] = []
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        certificate.configure_cert(context)
        context.sni_callback = self._sni
        server = self.plain.server
        server.socket = context.wrap_socket(server.socket, server_side=True)
        self.port = self.plain.port

    def _sni(self, _socket: ssl.SSLObject, name: str | None, _context: ssl.SSLContext) -> None:
        self.server_names.append(name)

    def __enter__(self) -> TlsReceiver:
        self.plain.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.plain.stop()


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture(scope="module")
def ca_bundle(ca: trustme.CA) -> Iterator[str]:
    with ca.cert_pem.tempfile() as path:
        yield path


class CountingResolver:
    """Answers every name with 127.0.0.1, and counts the lookups."""

    def __init__(self) -> None:
        self.lookups: list[tuple[str, int]] = []

    def __call__(self, host: str, port: int) -> list[str]:
        self.lookups.append((host, port))
        return ["127.0.0.1"]


def deliver_over_tls(
    hooked: Hooked, tls: TlsReceiver, *, ca_bundle: str | None
) -> tuple[str | None, CountingResolver, WebhookAttempt]:
    with runtime.sessions()() as session:
        endpoint = session.get_one(WebhookEndpoint, hooked.endpoint.id)
        endpoint.url = f"https://{NAME}:{tls.port}/hooks"
        session.commit()
    tls.plain.secrets = [hooked.secret]
    row = emit(hooked)
    resolver = CountingResolver()
    status = services.deliver(
        runtime.sessions(),
        row.id,
        policy=AddressPolicy(allow=frozenset({("127.0.0.1", tls.port)})),
        resolver=resolver,
        sender=functools.partial(services.send_pinned, ca_bundle=ca_bundle),
    )
    with runtime.sessions()() as session:
        attempt = session.scalars(
            select(WebhookAttempt).where(WebhookAttempt.delivery_id == row.id)
        ).one()
    return status, resolver, attempt


def test_the_certificate_is_verified_for_the_name_on_the_pinned_address(
    db: Session, hooked: Hooked, ca: trustme.CA, ca_bundle: str
) -> None:
    with TlsReceiver(ca.issue_cert(NAME)) as tls:
        status, resolver, attempt = deliver_over_tls(hooked, tls, ca_bundle=ca_bundle)
    assert (status, attempt.status_code, attempt.error) == ("delivered", 200, None)
    # Resolved once, by the guard; the connection went to the checked address (the system
    # resolver knows no `.test` name), and asked for the name in SNI and the Host header.
    assert resolver.lookups == [(NAME, tls.port)]
    assert tls.server_names == [NAME]
    (received,) = tls.plain.received
    assert received.headers["host"] == f"{NAME}:{tls.port}"
    assert received.verified_with == [hooked.secret]


@pytest.mark.parametrize(
    "names",
    [
        pytest.param(["other.merchant.test"], id="another name"),
        pytest.param(["127.0.0.1"], id="the pinned address, not the name"),
    ],
)
def test_a_certificate_for_anything_but_the_name_fails(
    db: Session, hooked: Hooked, ca: trustme.CA, ca_bundle: str, names: list[str]
) -> None:
    """Signed by a trusted CA, yet not for the endpoint's name: refused, even when it is
    valid for the very address the connection went to."""
    with TlsReceiver(ca.issue_cert(*names)) as tls:
        status, _, attempt = deliver_over_tls(hooked, tls, ca_bundle=ca_bundle)
    assert status == "pending"  # a failed attempt, retried later
    assert attempt.status_code is None
    assert attempt.error is not None
    # The hostname check failed for the name, on a connection to the pinned address.
    assert attempt.error.startswith("SSLError")
    assert "CertificateError" in attempt.error
    assert f"'{NAME}'" in attempt.error
    assert "host='127.0.0.1'" in attempt.error
    assert tls.plain.received == []


def test_an_untrusted_certificate_fails_by_default(
    db: Session, hooked: Hooked, ca: trustme.CA
) -> None:
    """Without the test CA, the system's trust store decides: a certificate for the right
    name from an unknown CA is refused; verification is never off."""
    with TlsReceiver(ca.issue_cert(NAME)) as tls:
        status, _, attempt = deliver_over_tls(hooked, tls, ca_bundle=None)
    assert status == "pending"
    assert attempt.error is not None
    assert "CERTIFICATE_VERIFY_FAILED" in attempt.error
    assert tls.plain.received == []
