"""Where a webhook may send rows: the orchestrator URL policy.

A trigger URL is written into the database and fires for every insert, so a
mistake here leaks rows (plain http over the internet) or ships a dev tunnel
to production. The rules are checked before anything touches the database.
"""

from __future__ import annotations

import ipaddress
import re
import unicodedata
from urllib.parse import SplitResult, quote, urlsplit

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


#: A host name as resolvers know it. libcurl refuses ``!*$&'(),;=^{}`"<>\\+`` in a host when pg_net
#: queues the request, which would fail every attempt of the webhook; refused here, at preview, instead.
_HOST_NAME = re.compile(r"^[a-z0-9_-]+(\.[a-z0-9_-]+)*$")


class UrlPolicyError(ValueError):
    """The URL breaks a rule; the message says which, never echoing credentials."""


def _ipv4_number(part: str) -> int | None:
    """One part of an inet_aton address: decimal, 0x hex or 0-prefixed octal; None if it is not one."""
    try:
        if part[:2].lower() == "0x":
            return int(part[2:], 16) if part[2:] else 0
        if len(part) > 1 and part.startswith("0"):
            return int(part[1:], 8)
        return int(part, 10) if part.isdigit() else None
    except ValueError:
        return None


def parse_ipv4(host: str) -> ipaddress.IPv4Address | None:
    """The address inet_aton (and so curl's resolver) reads from `host`, shorthand forms included.

    `127.1`, `2130706433`, `0x7f000001` and `0177.0.0.1` are all 127.0.0.1: 1 to 4
    parts, each decimal, hex or octal, the last filling the remaining bytes.
    """
    parts = host.split(".")
    if not 1 <= len(parts) <= 4 or not all(parts):
        return None
    numbers = [_ipv4_number(part) for part in parts]
    if any(number is None for number in numbers):
        return None
    *leading, last = numbers
    if any(number > 0xFF for number in leading) or last >= 1 << (8 * (5 - len(numbers))):
        return None
    value = 0
    for number in leading:
        value = value << 8 | number
    return ipaddress.IPv4Address(value << (8 * (5 - len(numbers))) | last)


def normalise_host(host: str) -> str:
    """The host as resolvers see it: lowercase, one trailing dot dropped, IDNA-encoded,
    IPv4 shorthand and decimal forms and IPv4-mapped IPv6 written canonically.

    Raises UrlPolicyError for a host no resolver would accept the same way (empty labels, bad IDNA,
    percent-encoding), so the policy checks below never see one spelling and curl another.
    """
    name = host.lower()
    if name.endswith("."):
        name = name[:-1]
    if "%" in name and ":" not in name:
        raise UrlPolicyError("must not percent-encode the host name")
    if ":" in name:  # IPv6 (urlsplit removed the brackets)
        try:
            address = ipaddress.IPv6Address(name)
        except ValueError:
            raise UrlPolicyError(f"has an invalid IPv6 host {host!r}") from None
        return str(address.ipv4_mapped or address)
    if not name.isascii():
        try:
            name = name.encode("idna").decode("ascii")
        except UnicodeError:
            raise UrlPolicyError(f"has a host name that is not valid IDNA: {host!r}") from None
    if not name or any(not label for label in name.split(".")):
        raise UrlPolicyError(f"has an invalid host name {host!r} (empty label)")
    ipv4 = parse_ipv4(name)
    if ipv4 is not None:
        return str(ipv4)
    if not _HOST_NAME.match(name):
        raise UrlPolicyError(
            f"has a host name pg_net (libcurl) would refuse when sending: {host!r}; "
            "a host name holds only letters, digits, '-', '_' and dots"
        )
    return name


def is_loopback_host(host: str) -> bool:
    """Loopback, or the unspecified address (which Linux connects to the local host), in any spelling."""
    name = normalise_host(host)
    if name == "localhost" or name.endswith(".localhost"):
        return True
    try:
        address = ipaddress.ip_address(name)
    except ValueError:
        return False
    return address.is_loopback or address.is_unspecified


def is_tunnel_host(host: str) -> bool:
    name = normalise_host(host)
    return any(name == suffix or name.endswith("." + suffix) for suffix in TUNNEL_HOST_SUFFIXES)


#: What a path may hold as it stands: printable ASCII. Everything else is refused or percent-encoded.
_PRINTABLE_ASCII = "".join(chr(code) for code in range(0x21, 0x7F))


def _encode_path(path: str, what: str) -> str:
    """`path` with non-ASCII characters percent-encoded as UTF-8; control characters refused.

    pg_net hands the URL to libcurl as bytes, and a raw non-ASCII byte in a request
    line is refused by most servers, so `/ingest/résumés` is sent as
    `/ingest/r%C3%A9sum%C3%A9s`. Existing escapes are kept as they are and must be
    well formed. NUL and other control characters are refused: the database cannot
    hold NUL in text, and the rest would corrupt the request line.
    """
    if "\x00" in path:
        raise UrlPolicyError(f"must not contain NUL characters in the {what}")
    if any(unicodedata.category(ch) == "Cc" for ch in path):
        raise UrlPolicyError(f"must not contain control characters in the {what}")
    if re.search(r"%(?![0-9A-Fa-f]{2})", path):
        raise UrlPolicyError(f"has a '%' in the {what} that is not a %XX escape; write a literal '%' as %25")
    return quote(path, safe=_PRINTABLE_ASCII)


def _absolute_http_url(url: str, example: str, no_credentials: str) -> SplitResult:
    """The parts of an absolute http(s) URL with a host, no whitespace, control characters or userinfo.

    Messages never quote the URL: only the scheme, when it is the problem.
    """
    if not isinstance(url, str) or not url.strip():
        raise UrlPolicyError(f"must be a non-empty absolute URL such as {example}")
    if url != url.strip() or any(ch.isspace() for ch in url):
        raise UrlPolicyError("must not contain whitespace")
    if any(unicodedata.category(ch) == "Cc" for ch in url):
        raise UrlPolicyError("must not contain NUL or other control characters")
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https"):
        raise UrlPolicyError(f"must be an absolute http(s) URL, got scheme {parts.scheme or 'none'!r}")
    if not parts.hostname:
        raise UrlPolicyError(f"must name a host, e.g. {example}")
    if parts.username is not None or parts.password is not None or "@" in parts.netloc:
        raise UrlPolicyError(no_credentials)
    return parts


def check_base_url(url: str, *, production: bool) -> str:
    """Return the normalised base URL (no trailing slash) or raise UrlPolicyError.

    Every stack needs an absolute http(s) URL; plain http only reaches loopback
    (a local orchestrator), because bearer tokens must not cross a network in
    clear text. Production stacks additionally refuse http, loopback and tunnel
    hosts. The host is checked in its normalised form (`normalise_host`), so
    `127.1`, `[::ffff:127.0.0.1]` or `abc.ngrok-free.dev.` cannot walk around a
    rule. A non-ASCII host is written in its IDNA (xn--) form and a non-ASCII path
    percent-encoded, as in webhook paths (`check_path`). A `?` or `#`, even with
    nothing after it, is refused: the webhook path would land in the query or fragment.
    """
    parts = _absolute_http_url(
        url,
        "https://orchestrator.example.com",
        "must not embed credentials; the trigger authenticates with a signed JWT",
    )
    if parts.query or parts.fragment or "?" in url or "#" in url:
        raise UrlPolicyError(
            "must not carry a query string or fragment (not even an empty '?' or '#'); "
            "put routes in each webhook's path"
        )
    try:
        port = parts.port
    except ValueError as exc:
        raise UrlPolicyError(f"has an invalid port: {exc}") from None
    host = parts.hostname
    canonical = normalise_host(host)
    if parts.scheme == "http" and not is_loopback_host(host):
        raise UrlPolicyError(
            f"uses plain http to {host!r}; bearer tokens may only travel in clear text to loopback, use https"
        )
    if production:
        if parts.scheme != "https":
            raise UrlPolicyError("production stacks require https")
        if is_loopback_host(host):
            raise UrlPolicyError(f"production stacks must not point at loopback host {host!r} ({canonical})")
        if is_tunnel_host(host):
            raise UrlPolicyError(
                f"production stacks must not point at tunnel host {host!r}; "
                "set the real orchestrator URL or use a non-production stack"
            )
    origin = url[: len(url) - len(parts.path)]
    if not origin.isascii():
        origin = f"{parts.scheme}://{canonical}" + (f":{port}" if port is not None else "")
    return (origin + _encode_path(parts.path, "path")).rstrip("/")


def check_path(path: str) -> str:
    """Return the webhook path, percent-encoded where needed, or raise UrlPolicyError.

    Non-ASCII characters are percent-encoded as UTF-8 (`/ingest/résumé` is sent as
    `/ingest/r%C3%A9sum%C3%A9`), so pg_net/libcurl send a valid request line; the
    orchestrator's router sees the decoded path. NUL, other control characters,
    whitespace, `#` and a `%` that starts no `%XX` escape are refused.
    """
    if not isinstance(path, str) or not path.startswith("/") or path.startswith("//"):
        raise UrlPolicyError("must be an absolute path starting with a single '/', e.g. /ingest/resumes/batch")
    if "\x00" in path:
        raise UrlPolicyError("must not contain NUL characters")
    if any(ch.isspace() for ch in path) or "#" in path:
        raise UrlPolicyError("must not contain whitespace or '#'")
    return _encode_path(path, "path")


def join_url(base_url: str, path: str) -> str:
    """The trigger URL: the orchestrator base followed by the webhook path."""
    return base_url.rstrip("/") + path


def check_alert_url(url: str, *, production: bool) -> str:
    """Return the alert URL (an incoming webhook of Slack, Teams, ...) or raise UrlPolicyError.

    Its path (Slack) or query (Teams workflows) is the credential, so a message names at most the
    scheme and host, never the rest. https, or http to loopback only; production stacks refuse
    http, loopback and tunnel hosts, as for the orchestrator.
    """
    parts = _absolute_http_url(
        url, "https://hooks.slack.com/services/...", "must not embed credentials before the host"
    )
    if parts.fragment or "#" in url:
        raise UrlPolicyError("must not carry a fragment ('#')")
    try:
        parts.port  # noqa: B018 - urlsplit checks the port only when asked
    except ValueError:
        raise UrlPolicyError("has an invalid port") from None
    host = normalise_host(parts.hostname)
    if parts.scheme == "http" and not is_loopback_host(host):
        raise UrlPolicyError(f"uses plain http to {host!r}; alerts leave the database over https only")
    if production and (parts.scheme != "https" or is_loopback_host(host) or is_tunnel_host(host)):
        raise UrlPolicyError("production stacks require https to a host that is neither loopback nor a tunnel")
    if not url.isascii() or re.search(r"%(?![0-9A-Fa-f]{2})", url):
        raise UrlPolicyError("must be ASCII with well-formed %XX escapes after the host")
    return url
