"""Where a webhook may send rows: the orchestrator URL policy.

A trigger URL is written into the database and fires for every insert, so a
mistake here leaks rows (plain http over the internet) or ships a dev tunnel
to production. The rules are checked before anything touches the database.
"""

from __future__ import annotations

import ipaddress
from urllib.parse import urlsplit

#: Public tunnel services used for local development. A production stack that
#: points at one of these is almost certainly a forgotten dev setting.
TUNNEL_HOST_SUFFIXES = (
    "ngrok.io",
    "ngrok.app",
    "ngrok.dev",
    "ngrok-free.app",
    "ngrok-free.dev",
    "trycloudflare.com",
    "loca.lt",
    "localtunnel.me",
    "serveo.net",
    "localhost.run",
    "lhr.life",
    "pagekite.me",
    "tunnelmole.net",
    "devtunnels.ms",
    "bore.pub",
)


class UrlPolicyError(ValueError):
    """The URL breaks a rule; the message says which, never echoing credentials."""


def is_loopback_host(host: str) -> bool:
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def is_tunnel_host(host: str) -> bool:
    return any(host == suffix or host.endswith("." + suffix) for suffix in TUNNEL_HOST_SUFFIXES)


def check_base_url(url: str, *, production: bool) -> str:
    """Return the normalised base URL (no trailing slash) or raise UrlPolicyError.

    Every stack needs an absolute http(s) URL; plain http only reaches loopback
    (a local orchestrator), because bearer tokens must not cross a network in
    clear text. Production stacks additionally refuse http, loopback and tunnel
    hosts.
    """
    if not isinstance(url, str) or not url.strip():
        raise UrlPolicyError("must be a non-empty absolute URL such as https://orchestrator.example.com")
    if url != url.strip() or any(ch.isspace() for ch in url):
        raise UrlPolicyError("must not contain whitespace")
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https"):
        raise UrlPolicyError(f"must be an absolute http(s) URL, got scheme {parts.scheme or 'none'!r}")
    if not parts.hostname:
        raise UrlPolicyError("must name a host, e.g. https://orchestrator.example.com")
    if parts.username is not None or parts.password is not None:
        raise UrlPolicyError("must not embed credentials; the trigger authenticates with a signed JWT")
    if parts.query or parts.fragment:
        raise UrlPolicyError("must not carry a query string or fragment; put routes in each webhook's path")
    try:
        _ = parts.port
    except ValueError as exc:
        raise UrlPolicyError(f"has an invalid port: {exc}") from None
    host = parts.hostname
    if parts.scheme == "http" and not is_loopback_host(host):
        raise UrlPolicyError(
            f"uses plain http to {host!r}; bearer tokens may only travel in clear text to loopback, use https"
        )
    if production:
        if parts.scheme != "https":
            raise UrlPolicyError("production stacks require https")
        if is_loopback_host(host):
            raise UrlPolicyError(f"production stacks must not point at loopback host {host!r}")
        if is_tunnel_host(host):
            raise UrlPolicyError(
                f"production stacks must not point at tunnel host {host!r}; "
                "set the real orchestrator URL or use a non-production stack"
            )
    return url.rstrip("/")


def check_path(path: str) -> str:
    """Return the webhook path or raise UrlPolicyError."""
    if not isinstance(path, str) or not path.startswith("/") or path.startswith("//"):
        raise UrlPolicyError("must be an absolute path starting with a single '/', e.g. /ingest/resumes/batch")
    if any(ch.isspace() for ch in path) or "#" in path:
        raise UrlPolicyError("must not contain whitespace or '#'")
    return path


def join_url(base_url: str, path: str) -> str:
    """The trigger URL: the orchestrator base followed by the webhook path."""
    return base_url.rstrip("/") + path
