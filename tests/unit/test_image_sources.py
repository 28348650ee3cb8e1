"""The image source policy by itself: what a URL and the addresses behind it may be."""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kubenova_api import config, imagesource
from kubenova_api.imagesource import SourceChecker, SourcePolicy, SourceRefused

PUBLIC = ipaddress.ip_address("198.51.100.7")  # TEST-NET-2: never contacted, only judged


def checker(policy: SourcePolicy | None = None, **dns: list[str]) -> SourceChecker:
    """A checker whose resolver answers from ``dns`` (no lookup leaves the process)."""

    def resolve(host: str, port: int) -> list[imagesource.IPAddress]:
        return [ipaddress.ip_address(a) for a in dns.get(host.replace(".", "_"), [])]

    return SourceChecker(policy or SourcePolicy(), resolver=resolve, own=lambda: [])


@pytest.mark.parametrize(
    ("url", "why"),
    [
        ("http://127.0.0.1/secret", "loopback"),
        ("http://127.8.9.10/x", "loopback"),
        ("http://[::1]/x", "loopback"),
        ("http://localhost/x", "loopback"),
        ("http://images.localhost/x", "loopback"),
        ("http://169.254.169.254/latest/meta-data/", "link-local"),
        ("http://[fe80::1]/x", "link-local"),
        ("http://0.0.0.0/x", "unspecified"),
        ("http://[::]/x", "unspecified"),
        ("http://224.0.0.1/x", "multicast"),
        ("http://255.255.255.255/x", "reserved"),
        ("http://[::ffff:127.0.0.1]/x", "loopback (inside"),
        ("http://[::ffff:169.254.169.254]/x", "link-local (inside"),
        ("http://[2002:7f00:1::]/x", "loopback (inside"),  # 6to4 of 127.0.0.1
        ("http://[64:ff9b::a9fe:a9fe]/x", "link-local (inside"),  # NAT64 of the metadata IP
        ("http://2852039166/x", "neither a DNS name nor a canonical IP"),
        ("http://0x7f.1/x", "neither a DNS name nor a canonical IP"),
        ("http://127.1/x", "neither a DNS name nor a canonical IP"),
        ("http://images.example:8080/x", "port 8080 is not an allowed image port"),
        ("ftp://images.example/x", "only http:// and https://"),
        ("http://user:pw@images.example/x", "credentials"),
        ("http://a\x00b.example/x", "is not a host name"),
        ("http://a b.example/x", "is not a host name"),
    ],
)
def test_refused_by_what_the_url_says(url: str, why: str) -> None:
    with pytest.raises(SourceRefused) as err:
        checker().check_static(url)
    assert why in str(err.value)
    assert "pw" not in str(err.value)


def test_refused_by_what_the_name_resolves_to() -> None:
    c = checker(images_example=["198.51.100.7", "127.0.0.1"], meta_example=["169.254.169.254"])
    with pytest.raises(SourceRefused, match=r"images\.example \(127\.0\.0\.1\) is a loopback"):
        c.target("http://images.example/disk.qcow2")  # every address counts, not the first
    with pytest.raises(SourceRefused, match="link-local"):
        c.target("https://meta.example/x")
    assert c.check_static("http://images.example/d").addresses == ()  # the controller's view


def test_accepted_sources_carry_the_checked_addresses() -> None:
    c = checker(images_example=["198.51.100.7", "2001:db8::7"])
    t = c.target("https://images.example/a/disk.qcow2?sig=1")
    assert t.addresses == (PUBLIC, ipaddress.ip_address("2001:db8::7"))
    assert (t.host, t.port, t.request_target, t.host_header) == (
        "images.example",
        443,
        "/a/disk.qcow2?sig=1",
        "images.example",
    )
    private = c.target("http://10.1.2.3/disk")  # RFC 1918 stays allowed, as in Glance
    assert private.addresses == (ipaddress.ip_address("10.1.2.3"),)


def test_the_hosts_own_addresses_are_refused() -> None:
    c = SourceChecker(SourcePolicy(), resolver=lambda h, p: [], own=lambda: [PUBLIC])
    with pytest.raises(SourceRefused, match="an address of this host itself"):
        c.target("http://198.51.100.7/x")


def test_own_addresses_are_read_from_proc() -> None:
    own = imagesource.own_addresses()
    assert ipaddress.ip_address("127.0.0.1") in own


def test_an_admin_opts_in_and_restricts() -> None:
    opted_in = checker(
        SourcePolicy(
            permitted_networks=(ipaddress.ip_network("127.0.0.1/32"),),
            allowed_ports=frozenset({8080}),
        )
    )
    assert opted_in.target("http://127.0.0.1:8080/x").port == 8080
    with pytest.raises(SourceRefused, match="loopback"):
        opted_in.target("http://127.0.0.2:8080/x")  # only the network named
    with pytest.raises(SourceRefused, match="port 80 "):
        opted_in.target("http://198.51.100.7/x")

    only = checker(
        SourcePolicy(allowed_hosts=(".images.example", "203.0.113.0/24")),
        a_images_example=["198.51.100.7"],
        other_example=["203.0.113.9"],
        evil_example=["198.51.100.8"],
    )
    assert only.target("http://a.images.example/x").addresses == (PUBLIC,)
    assert only.target("http://other.example/x").addresses  # by network
    with pytest.raises(SourceRefused, match="not an allowed image source"):
        only.target("http://evil.example/x")

    refused = checker(
        SourcePolicy(disallowed_hosts=("10.0.0.0/8", "bad.example")), ok_example=["10.9.9.9"]
    )
    with pytest.raises(SourceRefused, match="disallowed"):
        refused.target("http://ok.example/x")
    with pytest.raises(SourceRefused, match="disallowed"):
        refused.check_static("http://BAD.example./x")


def test_flags() -> None:
    def parse(*argv: str) -> SourcePolicy:
        return config.parse(imagesource.SourceOptions, list(argv), "t", "t").source_policy()

    assert parse() == SourcePolicy()
    a = parse(
        "--image-allowed-ports",
        "*",
        "--image-permitted-networks",
        "127.0.0.1/32, ::1",
        "--image-disallowed-hosts",
        "10.0.0.0/8,bad.example",
    )
    assert a.allowed_ports is None
    assert a.permitted_networks == (
        ipaddress.ip_network("127.0.0.1/32"),
        ipaddress.ip_network("::1/128"),
    )
    assert a.disallowed_hosts == ("10.0.0.0/8", "bad.example")
    with pytest.raises(ValueError, match="not a port list"):
        imagesource.parse_ports("0,80")


def test_the_controller_judges_an_images_urls_without_resolving() -> None:
    lookups: list[str] = []

    def resolve(host: str, port: int) -> list[imagesource.IPAddress]:
        lookups.append(host)
        return []

    c = SourceChecker(SourcePolicy(), resolver=resolve, own=lambda: [])
    uec = {
        "uec": {
            "kernel": {"url": "https://images.example/vmlinuz"},
            "ramdisk": {"url": "http://169.254.169.254/initrd"},
        }
    }
    assert imagesource.urls_of(uec) == [
        "https://images.example/vmlinuz",
        "http://169.254.169.254/initrd",
    ]
    refusal = imagesource.refusal_of(c, uec)
    assert refusal is not None and "link-local" in str(refusal)
    assert imagesource.refusal_of(c, {"disk": {"url": "https://images.example/d"}}) is None
    assert lookups == []


@settings(max_examples=300, deadline=None)
@given(
    st.one_of(
        st.text(max_size=60),
        st.builds(
            lambda scheme, host, rest: f"{scheme}://{host}{rest}",
            st.sampled_from(["http", "https", "HTTP", "ftp", ""]),
            st.text(max_size=30),
            st.text(max_size=20),
        ),
    )
)
def test_any_url_is_accepted_or_refused_never_an_error(url: str) -> None:
    """Whatever a tenant writes (or a server redirects to): a Target or SourceRefused."""
    c = SourceChecker(SourcePolicy(allowed_ports=None), resolver=lambda h, p: [PUBLIC], own=list)
    try:
        target = c.target(url)
    except (SourceRefused, LookupError):
        return
    assert target.scheme in ("http", "https") and target.addresses


def test_credentials_before_a_malformed_port_are_refused_without_an_error() -> None:
    """Found by the property test above: 'HTTP://@::' made the refusal's own message raise."""
    c = SourceChecker(SourcePolicy(allowed_ports=None), resolver=lambda h, p: [PUBLIC], own=list)
    with pytest.raises(SourceRefused, match="credentials"):
        c.target("HTTP://user:secret@::")
