"""Where images may come from: one policy that the controller applies early (to what a URL says,
without resolving names) and the agent applies when it fetches (to every address a name resolves
to, on every redirect, and then connects to the address it checked).

Image URLs are written by tenants, and the agent fetches them from inside the cloud: without a
policy an Image is a way to read the host's own services (``http://127.0.0.1:…``), the cloud's
metadata service (``169.254.169.254``) or anything else the host can reach, and to learn the
answer's sha256 from the Server's status. Glance's web-download import has the same problem and
the same kind of answer (``[import_filtering_opts]``: ``allowed_schemes``, ``allowed_hosts``,
``disallowed_hosts``, ``allowed_ports``); this is that, plus refusing by default what no image
server of a multi-tenant cloud is:

* loopback (``127.0.0.0/8``, ``::1``, the name ``localhost``), link-local (``169.254.0.0/16``
  with the metadata service, ``fe80::/10``), unspecified (``0.0.0.0/8``, ``::``), multicast,
  reserved and broadcast addresses, IPv6 site-local, and IPv4 addresses hidden in IPv6 ones
  (mapped, 6to4, NAT64) by what they hide;
* the host's own addresses (read from ``/proc/net``: whatever interfaces it has);
* ports other than 80 and 443 (Glance's default ``allowed_ports``);
* host names that are numbers but not a canonical address (``2852039166``, ``0x7f.1``,
  ``127.1``: resolvers read them as addresses, people do not).

An admin widens it explicitly: ``permitted_networks`` exempts networks from the refusals above
(a node-local mirror on loopback, or the test bed, which serves images from 127.0.0.1),
``allowed_ports`` lists other ports (or ``*``), ``allowed_hosts`` restricts sources to a list,
``disallowed_hosts`` refuses more. Private networks (RFC 1918, IPv6 ULA) are allowed by default,
as in Glance: clouds keep their image servers there; refuse them with ``disallowed_hosts``.

This module is shared by the controller and the agent (they never import each other), so it
depends on the standard library (and kubenova_api's settings declarations) only.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import pathlib
import socket
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from kubenova_api.config import option

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

REASON = "ImageSourceRefused"
SCHEMES = ("http", "https")
DEFAULT_PORTS = {"http": 80, "https": 443}

_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")
_THIS_NETWORK = ipaddress.IPv4Network("0.0.0.0/8")
_LOCALHOST_ADDRESSES = (ipaddress.IPv4Address("127.0.0.1"), ipaddress.IPv6Address("::1"))


class SourceRefused(Exception):
    """The policy refuses this image source; fetching it again will not help."""

    reason = REASON


@dataclasses.dataclass(frozen=True)
class SourcePolicy:
    """Where images may be fetched from (agent and controller settings)."""

    allowed_ports: frozenset[int] | None = frozenset({80, 443})
    """Ports image URLs may name (explicitly or by their scheme); None allows any."""
    allowed_hosts: tuple[str, ...] = ()
    """When not empty, the only sources: host names (``images.example``, or ``.example`` for a
    domain and its subdomains) or networks (``10.1.0.0/16``) every resolved address must be in.
    The built-in refusals still apply (see ``permitted_networks``)."""
    disallowed_hosts: tuple[str, ...] = ()
    """Sources refused besides the built-in ones: host names, domains or networks."""
    permitted_networks: tuple[IPNetwork, ...] = ()
    """Networks exempt from the built-in refusals (loopback, link-local, the host's own
    addresses, …): the explicit opt-in for a node-local mirror, or for the test bed."""
    refuse_own_addresses: bool = True
    """Refuse the addresses of the host that fetches (the agent's host, the controller's pod)."""
    max_redirects: int = 5
    """Redirects followed at most (each one checked like the first URL)."""


@dataclasses.dataclass(frozen=True)
class Target:
    """A URL the policy accepted, with the addresses it accepted for it."""

    url: str
    scheme: str
    host: str
    """The host as the URL names it (the HTTP ``Host`` header and the TLS server name)."""
    port: int
    request_target: str
    """What follows the host: path and query, at least ``/``."""
    addresses: tuple[IPAddress, ...]
    """The checked addresses, in the resolver's order: connect to these and nothing else."""

    @property
    def host_header(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return host if DEFAULT_PORTS[self.scheme] == self.port else f"{host}:{self.port}"


Resolver = Callable[[str, int], list[IPAddress]]
"""Host name and port to the addresses it resolves to (``getaddrinfo``)."""


def resolve(host: str, port: int) -> list[IPAddress]:
    """Every address ``host`` resolves to for a TCP connection, in the resolver's order."""
    out: list[IPAddress] = []
    for *_, sockaddr in socket.getaddrinfo(host, port, type=socket.SOCK_STREAM):
        ip = ipaddress.ip_address(str(sockaddr[0]).split("%", 1)[0])
        if ip not in out:
            out.append(ip)
    return out


class _OwnAddresses:
    """This host's addresses from ``/proc/net`` (Linux), re-read at most every ``ttl`` s."""

    def __init__(self, proc: pathlib.Path = pathlib.Path("/proc/net"), ttl: float = 30.0) -> None:
        self._proc = proc
        self._ttl = ttl
        self._lock = threading.Lock()
        self._at = -ttl
        self._cached: frozenset[IPAddress] = frozenset()

    def __call__(self) -> frozenset[IPAddress]:
        with self._lock:
            if time.monotonic() - self._at >= self._ttl:
                self._cached = frozenset(self._read())
                self._at = time.monotonic()
            return self._cached

    def _read(self) -> set[IPAddress]:
        found: set[IPAddress] = set()
        try:  # IPv4: "|-- 10.0.0.5" followed by "/32 host LOCAL" is one of ours
            last = None
            for line in (self._proc / "fib_trie").read_text().splitlines():
                text = line.strip()
                if text.startswith(("|--", "+--")):
                    last = text[3:].strip().split("/")[0]
                elif "host LOCAL" in text and last is not None:
                    found.add(ipaddress.ip_address(last))
        except (OSError, ValueError):
            pass
        try:  # IPv6: one address per line, 32 hex digits first
            for line in (self._proc / "if_inet6").read_text().splitlines():
                fields = line.split()
                if fields:
                    found.add(ipaddress.IPv6Address(int(fields[0], 16)))
        except (OSError, ValueError):
            pass
        return found


own_addresses = _OwnAddresses()
"""The addresses of the host this process runs on (cached for 30 s)."""


def _embedded_ipv4(ip: IPAddress) -> ipaddress.IPv4Address | None:
    if isinstance(ip, ipaddress.IPv4Address):
        return None
    if ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    if ip.sixtofour is not None:
        return ip.sixtofour
    if ip in _NAT64:
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    return None


def special_kind(ip: IPAddress) -> str | None:
    """What makes ``ip`` no place for images (``"loopback"``, ``"link-local"``, …), or None."""
    inner = _embedded_ipv4(ip)
    if inner is not None:
        kind = special_kind(inner)
        return f"{kind} (inside {ip})" if kind else None
    if ip.is_loopback:
        return "loopback"
    if ip.is_link_local:
        return "link-local"
    if ip.is_unspecified or (isinstance(ip, ipaddress.IPv4Address) and ip in _THIS_NETWORK):
        return "unspecified"
    if ip.is_multicast:
        return "multicast"
    if isinstance(ip, ipaddress.IPv6Address) and ip.is_site_local:
        return "site-local"
    if ip.is_reserved or ip == ipaddress.IPv4Address("255.255.255.255"):
        return "reserved"
    return None


def _is_numeric_name(host: str) -> bool:
    """A host made of numbers (decimal, octal, hex) that resolvers read as an IPv4 address."""
    parts = host.lower().split(".")
    return all(p and (p.isdigit() or (p.startswith("0x") and _hex(p[2:]))) for p in parts)


def _hex(text: str) -> bool:
    return all(c in "0123456789abcdef" for c in text)


def _name_matches(host: str, entry: str) -> bool:
    entry = entry.lower().rstrip(".")
    if entry.startswith("."):
        return host == entry[1:] or host.endswith(entry)
    return host == entry


def _as_network(entry: str) -> IPNetwork | None:
    try:
        return ipaddress.ip_network(entry, strict=False)
    except ValueError:
        return None


class SourceChecker:
    """Applies a :class:`SourcePolicy`: :meth:`check_static` to what a URL says (the
    controller), :meth:`target` to that and every address its host resolves to (the agent)."""

    def __init__(
        self,
        policy: SourcePolicy,
        resolver: Resolver = resolve,
        own: Callable[[], Iterable[IPAddress]] = own_addresses,
    ) -> None:
        self.policy = policy
        self._resolver = resolver
        self._own = own
        self._disallowed_names = [e for e in policy.disallowed_hosts if _as_network(e) is None]
        self._disallowed_nets = [n for e in policy.disallowed_hosts if (n := _as_network(e))]
        self._allowed_names = [e for e in policy.allowed_hosts if _as_network(e) is None]
        self._allowed_nets = [n for e in policy.allowed_hosts if (n := _as_network(e))]

    def check_static(self, url: str) -> Target:
        """Refuse what the URL itself shows (scheme, port, host name, a literal address);
        ``addresses`` of the result is empty unless the host is a literal address."""
        try:
            parts = urllib.parse.urlsplit(url)
            scheme = parts.scheme.lower()
            host = (parts.hostname or "").rstrip(".")
            credentials = parts.username is not None or parts.password is not None
        except ValueError as exc:
            raise SourceRefused(f"{url!r} is not a valid URL: {exc}") from exc
        if scheme not in SCHEMES:
            raise SourceRefused(f"{url}: only http:// and https:// URLs are fetched")
        if credentials:
            raise SourceRefused(f"{_safe(url)}: credentials in image URLs are not supported")
        if not host:
            raise SourceRefused(f"{url}: no host")
        if any(c.isspace() or not c.isprintable() or c in '\\<>"`{}|^' for c in host):
            raise SourceRefused(f"{url!r}: {host!r} is not a host name")
        try:
            port = parts.port or DEFAULT_PORTS[scheme]
        except ValueError as exc:
            raise SourceRefused(f"{url}: {exc}") from exc
        allowed_ports = self.policy.allowed_ports
        if allowed_ports is not None and port not in allowed_ports:
            ports = ", ".join(str(p) for p in sorted(allowed_ports)) or "none"
            raise SourceRefused(
                f"{url}: port {port} is not an allowed image port ({ports}; an admin can allow "
                "more with --image-allowed-ports)"
            )
        literal = _literal(host)
        if literal is None and _is_numeric_name(host):
            raise SourceRefused(f"{url}: {host!r} is neither a DNS name nor a canonical IP address")
        for entry in self._disallowed_names:
            if _name_matches(host, entry):
                raise SourceRefused(f"{url}: host {host} is disallowed by the image policy")
        static = self._static_addresses(host, literal)
        if self._allowed_names or self._allowed_nets:
            named = any(_name_matches(host, e) for e in self._allowed_names)
            if not named and static is not None and not self._all_allowed(static):
                raise SourceRefused(f"{url}: host {host} is not an allowed image source")
            if not named and static is None and not self._allowed_nets:
                raise SourceRefused(f"{url}: host {host} is not an allowed image source")
        addresses = tuple(static or ())
        for ip in addresses:
            self._check_address(url, host, ip)
        path = parts.path or "/"
        request_target = f"{path}?{parts.query}" if parts.query else path
        return Target(url, scheme, host, port, request_target, addresses)

    def target(self, url: str) -> Target:
        """The URL checked, its host resolved once and every address checked: connect to
        ``addresses`` only (never resolve again, or a rebinding DNS answer gets through)."""
        static = self.check_static(url)
        if static.addresses:
            return static
        try:
            found = self._resolver(static.host, static.port)
        except (OSError, UnicodeError) as exc:
            raise LookupError(f"{url}: cannot resolve {static.host}: {exc}") from exc
        except ValueError as exc:  # a NUL in the name, say: no name at all
            raise SourceRefused(f"{url}: {static.host!r} is not a host name: {exc}") from exc
        if not found:
            raise LookupError(f"{url}: {static.host} has no address")
        named = any(_name_matches(static.host, e) for e in self._allowed_names)
        restricted = self._allowed_names or self._allowed_nets
        if restricted and not named and not self._all_allowed(found):
            raise SourceRefused(f"{url}: host {static.host} is not an allowed image source")
        for ip in found:
            self._check_address(url, static.host, ip)
        return dataclasses.replace(static, addresses=tuple(found))

    def _all_allowed(self, addresses: Iterable[IPAddress]) -> bool:
        return all(any(ip in net for net in self._allowed_nets) for ip in addresses)

    def _static_addresses(self, host: str, literal: IPAddress | None) -> list[IPAddress] | None:
        if literal is not None:
            return [literal]
        if host.lower() == "localhost" or host.lower().endswith(".localhost"):
            return list(_LOCALHOST_ADDRESSES)  # RFC 6761: always loopback
        return None

    def _check_address(self, url: str, host: str, ip: IPAddress) -> None:
        shown = host if host == str(ip) else f"{host} ({ip})"
        for net in self._disallowed_nets:
            if ip in net:
                raise SourceRefused(f"{url}: {shown} is in {net}, disallowed by the image policy")
        if any(ip in net for net in self.policy.permitted_networks):
            return
        kind = special_kind(ip)
        if kind is not None:
            raise SourceRefused(
                f"{url}: {shown} is a {kind} address, refused as an image source (an admin "
                "can permit a network with --image-permitted-networks)"
            )
        if self.policy.refuse_own_addresses and ip in set(self._own()):
            raise SourceRefused(f"{url}: {shown} is an address of this host itself")


def _literal(host: str) -> IPAddress | None:
    try:
        return ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return None


def _safe(url: str) -> str:
    """``url`` without its credentials (never echo a password into a status)."""
    try:
        parts = urllib.parse.urlsplit(url)
        netloc = parts.hostname or ""
        if parts.port:
            netloc = f"{netloc}:{parts.port}"
    except ValueError:  # a malformed URL or port after the credentials: say neither
        return f"{url.partition(':')[0]}://…"
    return urllib.parse.urlunsplit(parts._replace(netloc=netloc))


def urls_of(source: Mapping[str, Any]) -> list[str]:
    """Every URL an Image's ``spec.source`` names (disk, or UEC kernel, ramdisk and disk)."""
    if source.get("disk"):
        return [str(source["disk"]["url"])]
    uec = source.get("uec") or {}
    return [str(uec[part]["url"]) for part in ("kernel", "ramdisk", "disk") if uec.get(part)]


def refusal_of(checker: SourceChecker, source: Mapping[str, Any]) -> SourceRefused | None:
    """Why the policy refuses an Image's source by what its URLs say (no name is resolved:
    the controller's early check; the agent checks again, addresses included), or None."""
    for url in urls_of(source):
        try:
            checker.check_static(url)
        except SourceRefused as exc:
            return exc
    return None


# ----------------------------------------------------------------------------- settings


def _csv(text: str) -> list[str]:
    return [item.strip() for item in text.split(",") if item.strip()]


def parse_ports(text: str) -> frozenset[int] | None:
    """``"80,443"`` to ports; ``"*"`` to None (any port)."""
    if text.strip() == "*":
        return None
    ports = frozenset(int(p) for p in _csv(text))
    if any(not 0 < p < 65536 for p in ports):
        raise ValueError(f"not a port list: {text!r}")
    return ports


def parse_networks(text: str) -> tuple[IPNetwork, ...]:
    return tuple(ipaddress.ip_network(n, strict=False) for n in _csv(text))


@dataclasses.dataclass(frozen=True)
class SourceOptions:
    """The policy's settings, declared once (:mod:`kubenova_api.config`) and shared by the
    agent's and the controller's settings, which inherit them: ``--image-allowed-ports``,
    ``--image-allowed-hosts``, ``--image-disallowed-hosts``, ``--image-permitted-networks``,
    ``--image-max-redirects`` (and their ``KUBENOVA_IMAGE_*`` variables)."""

    image_allowed_ports: str = option(
        "80,443",
        "Ports image URLs may use, comma-separated, or * for any (Glance's allowed_ports).",
    )
    image_allowed_hosts: str = option(
        "",
        "If set, the only image sources: host names, .domains (a domain and its subdomains) or "
        "networks, comma-separated (Glance's allowed_hosts).",
    )
    image_disallowed_hosts: str = option(
        "",
        "Image sources refused besides loopback, link-local and the host's own addresses: host "
        "names, .domains or networks, comma-separated (Glance's disallowed_hosts).",
    )
    image_permitted_networks: str = option(
        "",
        "Networks exempt from the built-in refusals (loopback, link-local, the host's own "
        "addresses, ...), comma-separated: e.g. 127.0.0.1/32 for a node-local mirror.",
    )
    image_max_redirects: int = option(
        5, "Redirects an image download follows at most (each checked like the first URL)."
    )

    def source_policy(self) -> SourcePolicy:
        """The policy these settings describe (ValueError on a malformed list)."""
        return SourcePolicy(
            allowed_ports=parse_ports(self.image_allowed_ports),
            allowed_hosts=tuple(_csv(self.image_allowed_hosts)),
            disallowed_hosts=tuple(_csv(self.image_disallowed_hosts)),
            permitted_networks=parse_networks(self.image_permitted_networks),
            max_redirects=self.image_max_redirects,
        )
