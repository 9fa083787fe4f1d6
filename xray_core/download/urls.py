"""Which addresses a download started from the served dashboard may fetch (server-side request forgery).

A page that lets anyone type a URL for the server to fetch lets them reach what the server can
reach: the hospital's internal services, the cloud metadata address (169.254.169.254), the
machine itself. So, on the app, a `UrlPolicy` holds:

- the hosts a typed mirror URL may name: the catalogue's own plus those the administrator adds
  (`settings.download_hosts()`);
- the rule for addresses: every address the host resolves to must be public, unless it lies in
  a network the administrator allows (`settings.download_private_networks()`), and so must the
  address actually connected to (checked again on the open socket, so a DNS answer that
  changes between check and connect gains nothing);
- redirects: each hop is checked against the address rule before it is followed (the host
  list applies to the address typed; a published file commonly redirects to a storage host).

The command line (`download --url`) is run by someone with a shell on the machine and takes any
http(s) URL: it passes no policy.
"""

from __future__ import annotations

import ipaddress
import socket
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from http.client import HTTPConnection, HTTPSConnection
from typing import Iterable

from xray_core.download.errors import DownloadError, NetworkError

_Network = ipaddress.IPv4Network | ipaddress.IPv6Network
_Address = ipaddress.IPv4Address | ipaddress.IPv6Address


class UrlNotAllowed(DownloadError):
    """The URL names a host outside the allow-list or an address inside the local network."""


def _kind(ip: _Address) -> str:
    if ip.is_loopback:
        return "loopback (this machine)"
    if ip.is_link_local:
        return "link-local"
    if ip.is_private:
        return "private (local network)"
    return "non-public"


@dataclass(frozen=True)
class UrlPolicy:
    """hosts: lower-case host names a typed URL may name (empty: any host).
    private_networks: networks whose non-public addresses may still be fetched from."""

    hosts: frozenset[str] = frozenset()
    private_networks: tuple[_Network, ...] = field(default_factory=tuple)

    @classmethod
    def build(cls, *, hosts: Iterable[str] = (), private_networks: Iterable[str] = ()) -> "UrlPolicy":
        nets = []
        for text in private_networks:
            try:
                nets.append(ipaddress.ip_network(text.strip(), strict=False))
            except ValueError as exc:
                raise UrlNotAllowed(f"{text!r} in the allowed download networks is not a network "
                                    f"(write it as 10.20.0.0/16 or 127.0.0.1/32): {exc}.") from None
        return cls(frozenset(h.strip().lower() for h in hosts if h.strip()), tuple(nets))

    # ------------------------------------------------------------------ checks

    def check(self, url: str, *, redirect: bool = False) -> None:
        """Raise UrlNotAllowed unless `url` may be fetched (a redirect skips the host list)."""
        parts = urllib.parse.urlsplit(url)
        if parts.scheme.lower() not in ("http", "https"):
            raise UrlNotAllowed(f"Cannot download from {url!r}: only http:// and https:// "
                                f"addresses are allowed.")
        host = (parts.hostname or "").lower()
        if not host:
            raise UrlNotAllowed(f"{url!r} names no host. Give the full address of the file.")
        if not redirect and self.hosts and host not in self.hosts:
            raise UrlNotAllowed(
                f"The dashboard downloads only from the catalogue's sources and the hosts the "
                f"administrator allowed ({', '.join(sorted(self.hosts))}); {host} is not one of "
                f"them. Ask the administrator to add it (XRAY_DOWNLOAD_HOSTS, or download_hosts "
                f"in the [xray] table of .streamlit/secrets.toml), or download with the command "
                f"line on the server.")
        try:
            port = parts.port or (443 if parts.scheme.lower() == "https" else 80)
        except ValueError:
            raise UrlNotAllowed(f"{url!r} has an invalid port number.") from None
        try:
            infos = socket.getaddrinfo(host, port, proto=socket.IPPROTO_TCP)
        except socket.gaierror as exc:
            raise NetworkError(f"Could not look up {host} ({exc.strerror}). Check that this "
                               f"computer is online (and any proxy settings) and that the address "
                               f"is right, then try again.") from None
        for info in infos:
            self.check_address(host, info[4][0], redirect=redirect)

    def check_address(self, host: str, address: str, *, redirect: bool = False) -> None:
        ip = ipaddress.ip_address(address.split("%")[0])
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        if ip.is_global or any(ip in net for net in self.private_networks):
            return
        via = "A redirect leads to" if redirect else "The address"
        raise UrlNotAllowed(
            f"{via} {host}, which is {ip}, a {_kind(ip)} address: the dashboard does not fetch "
            f"from inside the local network unless the administrator allows that network "
            f"(XRAY_DOWNLOAD_PRIVATE_NETWORKS, or download_private_networks in the [xray] "
            f"table of .streamlit/secrets.toml). Nothing was downloaded.")

    # ------------------------------------------------------------------ urllib plumbing

    def opener(self) -> urllib.request.OpenerDirector:
        """An opener that checks each redirect hop and each socket's peer address."""
        return urllib.request.build_opener(_RedirectHandler(self), _HTTPHandler(self),
                                           _HTTPSHandler(self))


def _guarded(base: type, policy: UrlPolicy) -> type:
    class Guarded(base):
        def connect(self):
            super().connect()
            peer = self.sock.getpeername()[0]
            policy.check_address(self.host, peer)
    return Guarded


def _direct(req: urllib.request.Request) -> bool:
    """True unless the request goes through a proxy (then the peer is the proxy, not the host)."""
    return not req.has_proxy() and getattr(req, "_tunnel_host", None) is None


class _HTTPHandler(urllib.request.HTTPHandler):
    def __init__(self, policy: UrlPolicy):
        super().__init__()
        self.policy = policy

    def http_open(self, req):
        base = _guarded(HTTPConnection, self.policy) if _direct(req) else HTTPConnection
        return self.do_open(base, req)


class _HTTPSHandler(urllib.request.HTTPSHandler):
    def __init__(self, policy: UrlPolicy):
        super().__init__()
        self.policy = policy

    def https_open(self, req):
        base = _guarded(HTTPSConnection, self.policy) if _direct(req) else HTTPSConnection
        return self.do_open(base, req, context=self._context)


class _RedirectHandler(urllib.request.HTTPRedirectHandler):
    def __init__(self, policy: UrlPolicy):
        super().__init__()
        self.policy = policy

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        self.policy.check(newurl, redirect=True)
        return super().redirect_request(req, fp, code, msg, headers, newurl)
