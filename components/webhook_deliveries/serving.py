"""`metrics` and `serve-metrics`: the outbox's Prometheus exposition, printed once or served on `/metrics`.

The endpoint has no authentication and no TLS, and what it serves names every webhook, its backlog and its
failures. So it listens on loopback unless the operator says otherwise with `--allow-non-loopback`
(a Prometheus on another host then reaches it through a firewall rule or a reverse proxy they chose).
"""

from __future__ import annotations

import argparse
import ipaddress
import socket
import sys
from collections.abc import Callable, Iterable
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, make_server

import psycopg
from prometheus_client import CollectorRegistry, generate_latest, make_wsgi_app
from prometheus_client.exposition import ThreadingWSGIServer

from webhook_deliveries.connection import OperatorError, connect
from webhook_deliveries.metrics import OutboxCollector

DEFAULT_LISTEN = "127.0.0.1:9187"
METRICS_PATH = "/metrics"
APPLICATION_NAME = "webhook-deliveries serve-metrics"


def listen_address(text: str) -> tuple[str, int]:
    """`HOST:PORT` with an IP address (IPv6 in brackets) or `localhost`; port 0 picks a free one."""
    host, separator, port = text.strip().rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if host == "localhost":
        host = "127.0.0.1"
    try:
        ipaddress.ip_address(host)
        number = int(port)
    except ValueError:
        number = -1
    if not separator or not 0 <= number <= 65_535:
        raise argparse.ArgumentTypeError(f"{text!r} is not HOST:PORT with an IP address, e.g. 127.0.0.1:9187")
    return host, number


def refuse_exposed(address: tuple[str, int], allowed: bool) -> None:
    """Raise before anything binds when the address is not loopback and the operator did not allow it."""
    if not allowed and not ipaddress.ip_address(address[0]).is_loopback:
        raise OperatorError(
            f"refusing to serve metrics on {address[0]}, not a loopback address: anyone who reaches it reads every "
            "webhook's name and backlog, without authentication. Pass --allow-non-loopback to do it anyway"
        )


def print_metrics(conn: psycopg.Connection, args: argparse.Namespace) -> int:
    registry = CollectorRegistry()
    # One read: its error is the command's own one-line error, not a scrape's report.
    collector = OutboxCollector(lambda: conn, args.window, conn, report_errors=False)
    registry.register(collector)
    text = generate_latest(registry).decode()
    if collector.last_error is not None:
        raise OperatorError(f"cannot read the outbox: {collector.last_error}")
    print(text, end="")
    return 0


class _QuietHandler(WSGIRequestHandler):
    """No line per scrape on stderr: under systemd that would be a journal line every 15 seconds."""

    def log_message(self, format: str, *args: Any) -> None:
        pass


def _only(path: str, app: Callable[..., Iterable[bytes]]) -> Callable[..., Iterable[bytes]]:
    def routed(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        if environ.get("PATH_INFO") == path:
            return app(environ, start_response)
        start_response("404 Not Found", [("Content-Type", "text/plain; charset=utf-8")])
        return [f"not found: the metrics are at {path}\n".encode()]

    return routed


def _named(conn: psycopg.Connection) -> psycopg.Connection:
    """Shown in pg_stat_activity, so a DBA can tell the exporter's session from the others."""
    conn.execute("SELECT pg_catalog.set_config('application_name', %s, false)", (APPLICATION_NAME,))
    return conn


def serve_metrics(conn: psycopg.Connection, args: argparse.Namespace) -> int:
    """Serve until interrupted; a scrape that finds the database gone reconnects at the next one."""
    registry = CollectorRegistry()

    def reconnect() -> psycopg.Connection:
        return _named(connect(args.dsn, args.stack, args.cwd))

    registry.register(OutboxCollector(reconnect, args.window, _named(conn)))
    host, port = args.listen
    server_class = type(
        "MetricsServer",
        (ThreadingWSGIServer,),
        {"address_family": socket.AF_INET6 if ":" in host else socket.AF_INET},
    )
    try:
        server = make_server(
            host, port, _only(METRICS_PATH, make_wsgi_app(registry)), server_class, handler_class=_QuietHandler
        )
    except OSError as exc:  # the port is taken, or the address is not this host's
        raise OperatorError(f"cannot listen on {host} port {port}: {exc.strerror or exc}") from None
    with server:
        bound_host, bound_port = server.server_address[:2]
        shown = f"[{bound_host}]" if ":" in bound_host else bound_host
        print(f"serving metrics on http://{shown}:{bound_port}{METRICS_PATH}", flush=True)
        try:
            server.serve_forever()
        except KeyboardInterrupt:
            print("stopped", file=sys.stderr)
    return 0
