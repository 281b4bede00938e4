"""Issue 12.12 and 12.8: the address guard's verdicts do not depend on the Python version, a malformed URL (also
in a redirect) is a refusal rather than an internal error, and scratch space is not a fixed path in /tmp."""

from __future__ import annotations

import ipaddress
import tempfile
from pathlib import Path

import pytest

from shared.errors import FetchRefused
from shared.net.fetch import fetch_to_file
from shared.net.netguard import Policy, join_url, refusal_reason, split_url
from shared.settings import DEFAULT_DATA_DIR, Settings, load_settings
from tests.http_source import MediaServer

STRICT, PRIVATE_OK = Policy(), Policy(allow_private=True)

# address → refused under the strict policy?  (the table holds where Python 3.11 and 3.13 disagree, and more)
VERDICTS = [
    ("64:ff9b:1::7f00:1", True), ("64:ff9b:1::808:808", True),  # local-use NAT64: global on 3.11
    ("::ffff:0:7f00:1", True), ("::ffff:0:a9fe:a9fe", True), ("::ffff:0:a00:1", True),  # IPv4-translated
    ("::ffff:0:808:808", False), ("::ffff:8.8.8.8", False), ("64:ff9b::808:808", False), ("2002:808:808::1", False),
    ("8.8.8.8", False), ("2606:4700:4700::1111", False), ("2001:4860:4860::8888", False),
    ("0.1.2.3", True), ("192.0.0.9", True), ("192.0.2.1", True), ("198.18.0.1", True), ("192.88.99.1", True),
    ("2001:db8::1", True), ("3fff::1", True), ("100::1", True), ("5f00::1", True), ("4000::1", True),
    ("fec0::1", True), ("::2", True), ("2001:2::1", True),
]


@pytest.mark.parametrize(("address", "refused"), VERDICTS)
def test_verdicts_come_from_our_own_table(address: str, refused: bool) -> None:
    assert (refusal_reason(ipaddress.ip_address(address), STRICT) is not None) == refused


def test_allow_private_opens_only_loopback_and_private_ranges() -> None:
    for address in ("127.0.0.1", "10.1.2.3", "192.168.1.1", "100.64.0.1", "::1", "fd00::1", "::ffff:0:7f00:1"):
        assert refusal_reason(ipaddress.ip_address(address), PRIVATE_OK) is None, address
    for address in ("169.254.169.254", "::ffff:0:a9fe:a9fe", "0.0.0.0", "64:ff9b:1::7f00:1", "fe80::1", "224.0.0.1"):
        assert refusal_reason(ipaddress.ip_address(address), PRIVATE_OK) is not None, address


def test_cloud_metadata_addresses_stay_refused_whatever_is_opened() -> None:
    """Alibaba's metadata service is in CGNAT space and AWS's IPv6 one in unique-local space: the ranges the demo's
    FETCH_ALLOW_PRIVATE opens, or an operator's FETCH_ALLOW_NETWORKS."""
    everything = Policy(allow_private=True, allow_networks=(ipaddress.ip_network("100.64.0.0/10"),
                                                            ipaddress.ip_network("fc00::/7")))
    for address in ("100.100.100.200", "fd00:ec2::254", "::ffff:0:6464:64c8"):
        assert refusal_reason(ipaddress.ip_address(address), everything) is not None, address
    assert refusal_reason(ipaddress.ip_address("100.100.100.201"), everything) is None  # the rest stays open


@pytest.mark.parametrize("url", ["http://[::1", "http://[::1]:99999/", "https://a.example:port/"])
def test_malformed_urls_are_refusals(url: str) -> None:
    with pytest.raises(FetchRefused) as caught:
        split_url(url)
    assert caught.value.code == "fetch_refused"


def test_a_malformed_location_is_a_refusal() -> None:
    assert join_url("https://a.example/x/y.mp4", "../z.mp4") == "https://a.example/z.mp4"
    with pytest.raises(FetchRefused):
        join_url("https://a.example/x.mp4", "http://[::1")


async def test_a_redirect_to_a_malformed_url_fails_once_as_refused(sample_video: Path, tmp_path: Path) -> None:
    """Was a ValueError from urljoin: an internal error, retried. Now a permanent fetch_refused."""
    with MediaServer(sample_video.parent) as origin:
        origin.redirects["/broken.mp4"] = "http://[::1"
        with pytest.raises(FetchRefused) as caught:
            await fetch_to_file(origin.url("broken.mp4"), tmp_path / "out", load_settings({}, fetch_allow_private=True))
        assert caught.value.code == "fetch_refused"
        assert [path for _, path, _ in origin.requests] == ["/broken.mp4"]


def test_scratch_default_is_not_a_shared_temporary_path() -> None:
    """Under the working directory's data folder (wherever the checkout is), never a fixed, guessable path in the
    shared temporary folder."""
    scratch = Settings().scratch_dir
    assert scratch == DEFAULT_DATA_DIR / "scratch" and not scratch.is_absolute()
    assert not str(scratch).startswith(tempfile.gettempdir())


@pytest.mark.parametrize(("sent", "meant"), [
    ("http://::1:8080/a.mp4", "http://[::1]:8080/a.mp4"),  # how ffmpeg's proxy requests write an IPv6 literal
    ("http://2001:db8::7:80/", "http://[2001:db8::7]:80/"),
    ("http://[::1]:8080/a.mp4", "http://[::1]:8080/a.mp4"), ("http://a.example:8080/a", "http://a.example:8080/a"),
])
def test_the_proxy_reads_an_ipv6_literal_without_brackets_as_its_client_meant_it(sent: str, meant: str) -> None:
    from shared.net.fetchproxy import _bracketed

    assert _bracketed(sent) == meant
    assert split_url(_bracketed(sent))[0].hostname == split_url(meant)[0].hostname
