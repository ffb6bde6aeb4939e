"""The address guard refuses every non-public destination, in every spelling, without a
lookup or a connection; names are checked through an injected resolver."""

from __future__ import annotations

import socket

import pytest

from commerce.outbound.guard import (
    AddressPolicy,
    AddressRefused,
    check_url,
    literal_address,
)

STRICT = AddressPolicy.strict()


def no_lookup(host: str, port: int) -> list[str]:
    raise AssertionError(f"{host} was looked up; a literal address needs no resolver")


@pytest.fixture(autouse=True)
def no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    """Nothing here may reach the network: any lookup or connection fails the test."""

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("the guard opened a connection or made a lookup")

    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket.socket, "connect", refuse)


REFUSED_LITERALS = [
    # IPv4 loopback in every form resolvers accept.
    "http://127.0.0.1/",
    "http://127.0.0.1:8080/hook",
    "http://127.1/",
    "http://127.0.1/",
    "http://2130706433/",
    "http://0x7f000001/",
    "http://0x7f.1/",
    "http://0X7F.0.0.1/",
    "http://0177.0.0.1/",
    "http://017700000001/",
    "http://127.000.000.001/",
    "http://127.0.0.1./",
    "http://127.255.255.254/",
    # Full-width digits and ideographic full stops.
    "https://\uff11\uff12\uff17\u3002\uff10\u3002\uff10\u3002\uff11/",
    # Unspecified, private, link-local, CGNAT, multicast, reserved, broadcast, benchmarking.
    "http://0.0.0.0/",
    "http://0/",
    "http://0x0/",
    "http://10.0.0.1/",
    "http://012.0.0.1/",
    "http://167772161/",
    "http://172.16.0.1/",
    "http://172.31.255.255/",
    "http://192.168.1.1/",
    "http://192.168.257/",
    "http://169.254.169.254/latest/meta-data/",
    "http://0xa9fea9fe/",
    "http://100.64.0.1/",
    "http://100.127.255.254/",
    "http://224.0.0.1/",
    "http://239.255.255.250/",
    "http://240.0.0.1/",
    "http://255.255.255.255/",
    "http://198.18.0.1/",
    "http://192.0.0.8/",
    "http://192.0.2.1/",
    "http://192.88.99.1/",
    # IPv6.
    "http://[::1]/",
    "http://[0:0:0:0:0:0:0:1]/",
    "http://[::]/",
    "http://[::ffff:127.0.0.1]/",
    "http://[::ffff:7f00:1]/",
    "http://[0:0:0:0:0:ffff:127.0.0.1]/",
    "http://[::ffff:10.0.0.1]/",
    "http://[::ffff:169.254.169.254]/",
    "http://[::ffff:100.64.0.1]/",
    "http://[::127.0.0.1]/",
    "http://[::8.8.8.8]/",
    "http://[fd00::1]/",
    "http://[fc00::1]/",
    "http://[fe80::1]/",
    "http://[fe80::1%25eth0]/",
    "http://[FE80::1%eth0]/",
    "http://[fec0::1]/",
    "http://[ff02::1]/",
    "http://[ff0e::1]/",
    "http://[2001:db8::1]/",
    "http://[100::1]/",
    "http://[2002:7f00:1::1]/",
    "http://[2002:a00:1::]/",
    "http://[2002:c0a8:101::1]/",
    "http://[2001:0:4136:e378:8000:63bf:80ff:fffe]/",
    "http://[64:ff9b::127.0.0.1]/",
    "http://[64:ff9b::10.0.0.1]/",
    # Names that are loopback by definition (RFC 6761), never looked up.
    "http://localhost/",
    "http://LOCALHOST./",
    "http://api.localhost/",
]


@pytest.mark.parametrize("url", REFUSED_LITERALS)
def test_non_public_addresses_are_refused_without_a_lookup(url: str) -> None:
    with pytest.raises(AddressRefused):
        check_url(url, policy=STRICT, resolver=no_lookup)


INVALID = [
    "ftp://93.184.216.34/",
    "file:///etc/passwd",
    "gopher://93.184.216.34/",
    "93.184.216.34/hook",
    "http:///hook",
    "http://user:pass@93.184.216.34/",
    "http://93.184.216.34:0/",
    "http://93.184.216.34:99999/",
    "http://1.2.3.4.5/",
    "http://256.1.1.1/",
    "http://1.2.3.256/",
    "http://0x7g.1/",
    "http://089.0.0.1/",
    "http://4294967296/",
    "http://[::1/",
    "http://[zz::1]/",
    "http://exa mple.com/",
    "http://-bad-.example/",
]


@pytest.mark.parametrize("url", INVALID)
def test_urls_of_another_shape_are_refused(url: str) -> None:
    with pytest.raises(AddressRefused):
        check_url(url, policy=STRICT, resolver=no_lookup)


@pytest.mark.parametrize(
    "host",
    ["127.1", "0x7f.1", "017700000001", "2130706433", "10.1", "192.168.257", "0", "1.2.3.4"],
)
def test_ipv4_forms_are_read_as_inet_aton_reads_them(host: str) -> None:
    assert str(literal_address(host)) == socket.inet_ntoa(socket.inet_aton(host))


@pytest.mark.parametrize(
    "addresses",
    [
        ["127.0.0.1"],
        ["10.0.0.7"],
        ["93.184.216.34", "10.0.0.7"],  # one bad address refuses the name
        ["::1"],
        ["fe80::1%eth0"],
        ["::ffff:169.254.169.254"],
        ["fd12:3456::1"],
        ["100.64.1.1"],
        [],
        ["not-an-address"],
    ],
)
def test_names_resolving_to_non_public_addresses_are_refused(addresses: list[str]) -> None:
    looked_up = []

    def resolver(host: str, port: int) -> list[str]:
        looked_up.append((host, port))
        return addresses

    with pytest.raises(AddressRefused):
        check_url("https://hooks.merchant.example/chatledger", policy=STRICT, resolver=resolver)
    assert looked_up == [("hooks.merchant.example", 443)]


def test_a_name_that_does_not_resolve_is_refused() -> None:
    def resolver(host: str, port: int) -> list[str]:
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    with pytest.raises(AddressRefused, match="does not resolve"):
        check_url("https://nowhere.example/", policy=STRICT, resolver=resolver)


@pytest.mark.parametrize(
    ("url", "address", "port"),
    [
        ("https://93.184.216.34/hook", "93.184.216.34", 443),
        ("http://93.184.216.34:8080/hook", "93.184.216.34", 8080),
        ("https://[2606:4700:4700::1111]/hook", "2606:4700:4700::1111", 443),
        ("https://[::ffff:93.184.216.34]/", "::ffff:5db8:d822", 443),
    ],
)
def test_public_addresses_pass(url: str, address: str, port: int) -> None:
    destination = check_url(url, policy=STRICT, resolver=no_lookup)
    assert (destination.address, destination.port) == (address, port)


def test_a_name_is_pinned_to_the_address_that_was_checked() -> None:
    destination = check_url(
        "https://Hooks.Merchant.example./x",
        policy=STRICT,
        resolver=lambda host, port: ["93.184.216.34", "2606:4700::1"],
    )
    assert destination.host == "hooks.merchant.example"
    assert destination.address == "93.184.216.34"


def test_the_test_policy_lets_through_exactly_one_address_and_port() -> None:
    policy = AddressPolicy(allow=frozenset({("127.0.0.1", 8080)}))
    assert check_url("http://127.0.0.1:8080/", policy=policy, resolver=no_lookup).port == 8080
    for url in ("http://127.0.0.1:8081/", "http://127.0.0.2:8080/", "http://[::1]:8080/"):
        with pytest.raises(AddressRefused):
            check_url(url, policy=policy, resolver=no_lookup)
    with pytest.raises(AddressRefused):
        check_url("http://127.0.0.1:8080/", policy=STRICT, resolver=no_lookup)
