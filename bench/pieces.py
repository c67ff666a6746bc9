"""'Where the time goes', piece by piece: what each part of a single-row insert costs per transaction.

The function-level profile runs 1,000 inserts in one transaction, which hides
what a single-row insert pays in every transaction: PL/pgSQL prepares each
expression afresh per transaction, and pgjwt's SQL `sign` is planned again.
Here each piece runs in a procedure that COMMITs after every iteration, so
each iteration is its own transaction, with no client round trip; an empty
loop's cost is subtracted. The pieces are our function's own statements
(`secure_webhooks.signing.trigger_function.read_secret` / `authorize` / `token_joins`), so
the figures cannot drift from the SQL we ship.

Every run (piece, round, column) gets a new session: pg_net's `net.wake()`
leaves one transaction callback per webhook transaction in its session, so a
session reused for thousands of committing loops slows as it goes (by ~11 ns
per callback per transaction here) and inflates every later piece, even those
that never call pg_net. A run of `iterations` webhook transactions still pays
iterations/2 callbacks on average, which is why they are kept short.
"""

from __future__ import annotations

import statistics
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass

import psycopg
from psycopg import sql

from bench.measure import APP_ROLE, insert_many, insert_one
from bench.variants import DIRECT, SECRET_NAME, TRIGGER_NAME, UNBOUND, VARIANTS_BY_KEY, Variant
from local_supabase.cluster import LocalSupabase
from secure_webhooks.signing.trigger_function import (
    DECLARATIONS,
    FunctionSpec,
    authorize,
    claims_expression,
    jwt_header_statement,
    read_secret,
    token_joins,
)

PROCEDURE = "public.bench_piece_{}"
#: Untimed iterations in each new session before the timed CALL: its first transaction compiles
#: the procedure and fills the catalog caches, which is not what a piece costs.
WARMUP_ITERATIONS = 20
#: The body one bound token is minted for: a row of the shape the benchmark inserts, as the trigger builds it.
SAMPLE_BODY = (
    '{"old_record": null, "record": {"id": 1, "name": "resume.pdf", "storage_path": "resumes/resume.pdf"}, '
    '"type": "INSERT", "table": "bench_d_pgcrypto", "schema": "public"}'
)
NEW_SESSION, AFTER_BULK = "new session", "after bulk"


@dataclass(frozen=True)
class Piece:
    label: str
    #: PL/pgSQL run once per transaction; `secret` holds the Vault secret beforehand.
    statement: str
    #: For a whole INSERT path: its variant, whose bulk INSERT the "after bulk" session runs first.
    variant: Variant | None = None


def _whole_path(key: str) -> Piece:
    variant = VARIANTS_BY_KEY[key]
    return Piece(f"INSERT, {variant.label} (whole path)", insert_one(variant).as_string(None) + ";", variant)


def _bound_token(spec: FunctionSpec) -> str:
    """The per-row part of the bound body: the header with its kid (once per statement, so once per
    single-row insert), claims with jti and body_sha256, and their signature."""
    claims = claims_expression(spec, jti="p.id", body="p.body")
    body = sql.Literal(SAMPLE_BODY).as_string(None)
    return (
        f"{jwt_header_statement()}\n"
        "    issued_at := pg_catalog.floor(pg_catalog.date_part('epoch', pg_catalog.clock_timestamp()))::bigint;\n"
        f"    PERFORM t.token FROM (SELECT {body}::jsonb AS body, pg_catalog.gen_random_uuid() AS id) AS p"
        f"{token_joins(spec.signer, claims)};"
    )


def _pieces() -> tuple[Piece, ...]:
    hooks_row = sql.SQL(
        "INSERT INTO supabase_functions.hooks (hook_table_id, hook_name, request_id) VALUES ({}::regclass, {}, i);"
    ).format(sql.Literal(VARIANTS_BY_KEY["b"].table_id.as_string(None)), sql.Literal(TRIGGER_NAME))
    return (
        _whole_path("b"),
        _whole_path(DIRECT),
        _whole_path(UNBOUND),
        _whole_path("e"),
        Piece("  our Vault read", read_secret(FunctionSpec(secret_name=SECRET_NAME))),
        Piece("  our per-statement token + headers, pgcrypto", authorize(FunctionSpec(signer="pgcrypto"))),
        Piece("  our per-statement token + headers, pgjwt", authorize(FunctionSpec(signer="pgjwt"))),
        Piece("  our bound token (jti, body_sha256), pgcrypto", _bound_token(FunctionSpec(signer="pgcrypto"))),
        Piece("  (b)'s supabase_functions.hooks row", hooks_row.as_string(None)),
    )


def _procedure(name: str, statement: str) -> sql.Composed:
    """A procedure that runs `statement` `iterations` times, one transaction each."""
    body = f"""
DECLARE
{DECLARATIONS}
BEGIN
  secret := initial_secret;
  FOR i IN 1..iterations LOOP
    {statement}
    COMMIT;
  END LOOP;
END
"""
    return sql.SQL(
        "CREATE OR REPLACE PROCEDURE {}(iterations integer, initial_secret text) LANGUAGE plpgsql AS {}"
    ).format(sql.SQL(name), sql.Literal(body))


@dataclass(frozen=True)
class _Runner:
    cluster: LocalSupabase
    secret: str
    iterations: int

    def us(self, procedure: str, before: sql.Composable | None = None) -> float:
        """Microseconds per iteration of `procedure` in a new session (that first runs `before`)."""
        call = sql.SQL("CALL {}(%s, %s)").format(sql.SQL(procedure))
        with psycopg.connect(self.cluster.dsn(APP_ROLE), autocommit=True) as conn:
            if before is not None:
                conn.execute(before)
            conn.execute(call, (WARMUP_ITERATIONS, self.secret))
            started = time.perf_counter()
            conn.execute(call, (self.iterations, self.secret))
            return (time.perf_counter() - started) * 1e6 / self.iterations


def time_pieces(
    cluster: LocalSupabase,
    secret: str,
    rounds: int,
    iterations: int,
    bulk_rows: int,
    after_round: Callable[[], None],
) -> dict[str, dict[str, float]]:
    """Per session kind, the median per-transaction cost of each piece, in us, net of an empty committing loop.

    "new session": each run in a new session. "after bulk" (whole INSERT paths
    only): a new session that first runs one `bulk_rows`-row INSERT into the
    variant's table, as a pooled connection after a batch import would.
    Rounds interleave the pieces, each round starting one further along;
    `after_round` empties the tables and the queue.
    """
    pieces = _pieces()
    names = {piece.label: PROCEDURE.format(number) for number, piece in enumerate(pieces)}
    empty = PROCEDURE.format("empty")
    runner = _Runner(cluster, secret, iterations)
    with psycopg.connect(cluster.dsn(APP_ROLE), autocommit=True) as conn:
        conn.execute(_procedure(empty, ""))
        for piece in pieces:
            conn.execute(_procedure(names[piece.label], piece.statement))
    samples: dict[str, dict[str, list[float]]] = {NEW_SESSION: defaultdict(list), AFTER_BULK: defaultdict(list)}
    for round_no in range(rounds):
        floor = runner.us(empty)
        for offset in range(len(pieces)):
            piece = pieces[(round_no + offset) % len(pieces)]
            samples[NEW_SESSION][piece.label].append(runner.us(names[piece.label]) - floor)
            if piece.variant is not None:
                bulk = insert_many(piece.variant, bulk_rows)
                samples[AFTER_BULK][piece.label].append(runner.us(names[piece.label], bulk) - floor)
        after_round()
    with psycopg.connect(cluster.dsn(APP_ROLE), autocommit=True) as conn:
        for name in [empty, *names.values()]:
            conn.execute(sql.SQL("DROP PROCEDURE {}").format(sql.SQL(name)))
    return {
        session: {label: statistics.median(values) for label, values in by_label.items()}
        for session, by_label in samples.items()
    }


def render(costs: dict[str, dict[str, float]], iterations: int, rounds: int) -> str:
    """One column per session kind (a new session, one that first ran a bulk INSERT), one row per piece."""
    sessions = list(costs)
    lines = [
        f"per transaction, in a procedure that COMMITs after each of {iterations} iterations, minus an empty loop,",
        f"each run in a new session; median of {rounds} rounds, in us (no client round trip, so lower than",
        "pgbench's figures); 'after bulk': the session first ran one bulk INSERT into that table:",
        f"    {'':<48} " + " ".join(f"{session:>12}" for session in sessions),
    ]
    for label in costs[sessions[0]]:
        cells = [f"{costs[session][label]:>12.1f}" if label in costs[session] else f"{'':>12}" for session in sessions]
        lines.append(f"    {label:<48} " + " ".join(cells))
    return "\n".join(lines)
