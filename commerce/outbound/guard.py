"""The address guard: outbound webhooks never reach loopback, link-local, private, reserved
or otherwise non-public addresses, whether named directly or through a host name.

A URL is checked at registration and again before every attempt. At an attempt, the host is
resolved once, every address it resolves to is checked (one bad address refuses the whole
host), and the request is then made to the checked address itself: `PinnedAdapter` connects
requests/urllib3 to that IP while the URL keeps the host name for the `Host` header, TLS SNI
and certificate verification. Resolving again inside the HTTP client would let a name that
answered a public address to the check answer a private one to the connection (DNS
rebinding); pinning closes that window, and the adapter changes nothing else about requests
(timeouts, TLS verification, no redirects), which a Host-header-on-an-IP-URL trick would
break for https.

Host forms that resolvers accept as IPv4 without any lookup (`127.1`, `0x7f.0.0.1`,
`017700000001`, `2130706433`, full-width digits and dots) are parsed here, with the
inet_aton and WHATWG URL rules, so they are checked as the address they mean and never
passed to a resolver.
"""

from __future__ import annotations

import ipaddress
import re
import socket
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from requests.adapters import HTTPAdapter

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
#: (host name, port) -> the addresses it resolves to, as strings.
Resolver = Callable[[str, int], Iterable[str]]

_DEFAULT_PORTS = {"http": 80, "https": 443}
_NAT64 = ipaddress.ip_network("64:ff9b::/96")
#: Not refused by `is_global` on every Python: IETF protocol assignments (192.0.0.8 and
#: the like) and the deprecated 6to4 relay anycast block.
_EXTRA_FORBIDDEN = (ipaddress.ip_network("192.0.0.0/24"), ipaddress.ip_network("192.88.99.0/24"))
_LABEL = r"[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?"
_HOST_NAME = re.compile(rf"^(?=.{{1,253}}$){_LABEL}(?:\.{_LABEL})*$")
_NUMERIC_LABEL = re.compile(r"^(?:0[xX][0-9a-fA-F]*|[0-9]+)$")


class AddressRefused(Exception):
    """The URL may not be called: its host is, or resolves to, a non-public address, or it is
    not a URL of the accepted shape. The message says why, for the merchant."""


@dataclass(frozen=True, slots=True)
class Destination:
    """A checked URL and the one address the request goes to."""

    url: str
    scheme: str
    host: str
    port: int
    address: str


@dataclass(frozen=True, slots=True)
class AddressPolicy:
    """Which checked addresses may be called.

    The product only ever uses `AddressPolicy.strict()`: the API and the Celery task build it
    themselves, and no setting, environment variable or request field reaches this class, so
    the guard cannot be switched off in a running service. A test that needs a merchant
    receiver on 127.0.0.1 builds `AddressPolicy(allow=frozenset({("127.0.0.1", port)}))` and
    passes it to `services.deliver` or `services.create_endpoint` directly: that exact address
    and port, nothing else, is let through, and every other check still applies.
    """

    #: (address, port) pairs let through despite being non-public. Empty in the product.
    allow: frozenset[tuple[str, int]] = field(default_factory=frozenset)

    @classmethod
    def strict(cls) -> AddressPolicy:
        return cls()

    def refusal(self, address: IPAddress, port: int) -> str | None:
        """Why `address` may not be called, or None when it may."""
        if (str(address), port) in self.allow:
            return None
        return forbidden_reason(address)


def forbidden_reason(address: IPAddress) -> str | None:
    """Why an address is not a public unicast one, or None for a public one."""
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return _embedded(forbidden_reason(address.ipv4_mapped))
        if address in _NAT64:
            return _embedded(forbidden_reason(ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)))
        if address.sixtofour is not None and forbidden_reason(address.sixtofour):
            return "a 6to4 address embedding a non-public IPv4 address"
        if address.teredo is not None:
            return "a Teredo address"
        if address.is_site_local:
            return "a site-local address"
        if int(address) >> 32 == 0:
            return "an IPv4-compatible or unspecified IPv6 address"
    checks = (
        (address.is_unspecified, "the unspecified address"),
        (address.is_loopback, "a loopback address"),
        (address.is_link_local, "a link-local address"),
        (address.is_multicast, "a multicast address"),
        (address.is_private, "a private address"),
        (address.is_reserved, "a reserved address"),
        (any(address in net for net in _EXTRA_FORBIDDEN), "a reserved address"),
        (not address.is_global, "not a public address"),  # 100.64/10 (CGNAT) and the like
    )
    for hit, reason in checks:
        if hit:
            return reason
    return None


def _embedded(reason: str | None) -> str | None:
    return None if reason is None else f"an IPv6 address embedding {reason}"


def parse_url(url: str) -> tuple[str, str, int]:
    """(scheme, host, port) of an http(s) URL; the host lower-cased, IDNA-encoded, without
    brackets. Raises AddressRefused for anything else."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        raise AddressRefused("Not a valid URL.") from None
    if parts.scheme not in _DEFAULT_PORTS:
        raise AddressRefused("Must be an http or https URL.")
    if parts.username is not None or parts.password is not None:
        raise AddressRefused("Must not carry a user name or password.")
    host = parts.hostname
    if not host:
        raise AddressRefused("Must name a host.")
    if port == 0:
        raise AddressRefused("Must not use port 0.")
    if any(c.isspace() or ord(c) < 32 for c in url):
        raise AddressRefused("Must not contain spaces or control characters.")
    if ":" not in host:
        try:
            # IDNA maps full-width digits and ideographic full stops to ASCII: those forms of
            # 127.0.0.1 become 127.0.0.1 here, before the check, as they would in a resolver.
            host = host.encode("idna").decode("ascii").lower()
        except UnicodeError:
            raise AddressRefused("The host name is not valid.") from None
        host = host.rstrip(".")
    return parts.scheme, host, port or _DEFAULT_PORTS[parts.scheme]


def literal_address(host: str) -> IPAddress | None:
    """The address a host names without a lookup, or None for a host name.

    IPv6 literals (with a zone, as in `fe80::1%eth0`), and every IPv4 form that inet_aton and
    browsers accept: one to four parts, each decimal, octal (leading 0) or hex (0x), the last
    part filling the remaining bytes.
    """
    if ":" in host:
        try:
            return ipaddress.IPv6Address(host)
        except ValueError:
            raise AddressRefused("The IPv6 address is not valid.") from None
    labels = host.split(".")
    # WHATWG: a host whose last label is a number is an IPv4 address, or invalid.
    if not _NUMERIC_LABEL.match(labels[-1]):
        return None
    if len(labels) > 4 or not all(_NUMERIC_LABEL.match(label) for label in labels):
        raise AddressRefused("The IPv4 address is not valid.")
    values = []
    for label in labels:
        try:
            if label[:2].lower() == "0x":
                values.append(int(label[2:] or "0", 16))
            elif len(label) > 1 and label.startswith("0"):
                values.append(int(label, 8))
            else:
                values.append(int(label))
        except ValueError:
            raise AddressRefused("The IPv4 address is not valid.") from None
    *leading, last = values
    if any(v > 255 for v in leading) or last >= 256 ** (4 - len(leading)):
        raise AddressRefused("The IPv4 address is not valid.")
    number = last
    for index, value in enumerate(leading):
        number |= value << (8 * (3 - index))
    return ipaddress.IPv4Address(number)


def system_resolver(host: str, port: int) -> list[str]:
    """Every address the system resolver gives for `host`, for TCP."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return [str(info[4][0]) for info in infos]


def check_url(url: str, *, policy: AddressPolicy, resolver: Resolver) -> Destination:
    """The URL's destination, after checking every address its host is or resolves to."""
    scheme, host, port = parse_url(url)
    literal = literal_address(host)
    if literal is not None:
        addresses: list[IPAddress] = [literal]
    else:
        if not _HOST_NAME.match(host):
            raise AddressRefused("The host name is not valid.")
        if host == "localhost" or host.endswith(".localhost"):
            raise AddressRefused("The host is loopback (localhost).")
        try:
            resolved = list(resolver(host, port))
        except (OSError, UnicodeError):
            raise AddressRefused(f"The host name {host} does not resolve.") from None
        if not resolved:
            raise AddressRefused(f"The host name {host} does not resolve.")
        try:
            addresses = [ipaddress.ip_address(a) for a in resolved]
        except ValueError:
            raise AddressRefused(f"The host name {host} resolves to an invalid address.") from None
    for address in addresses:
        reason = policy.refusal(address, port)
        if reason is not None:
            shown = host if literal is not None else f"{host} ({address})"
            raise AddressRefused(f"The host {shown} is {reason}.")
    return Destination(url=url, scheme=scheme, host=host, port=port, address=str(addresses[0]))


class PinnedAdapter(HTTPAdapter):
    """Connect to the checked address, whatever the name resolves to by now.

    urllib3 gets the IP as the host to connect to, and the original host name as
    `server_hostname` (SNI) and `assert_hostname` (certificate check); the request keeps
    the host name in its `Host` header.
    """

    def __init__(self, destination: Destination, **kwargs: Any) -> None:
        self.destination = destination
        super().__init__(max_retries=0, **kwargs)

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        kwargs["server_hostname"] = self.destination.host
        kwargs["assert_hostname"] = self.destination.host
        super().init_poolmanager(*args, **kwargs)

    def send(self, request: Any, *args: Any, **kwargs: Any) -> Any:
        parts = urlsplit(request.url)
        address = self.destination.address
        netloc_host = f"[{address}]" if ":" in address else address
        request.url = urlunsplit(
            (
                parts.scheme,
                f"{netloc_host}:{self.destination.port}",
                parts.path or "/",
                parts.query,
                "",
            )
        )
        request.headers["Host"] = _host_header(self.destination)
        return super().send(request, *args, **kwargs)


def _host_header(destination: Destination) -> str:
    host = f"[{destination.host}]" if ":" in destination.host else destination.host
    if destination.port == _DEFAULT_PORTS[destination.scheme]:
        return host
    return f"{host}:{destination.port}"
