"""'Where the time goes', piece by piece: what each part of a single-row insert costs per transaction.

The function-level profile runs 1,000 inserts in one transaction, which hides
what a single-row insert pays in every transaction: PL/pgSQL prepares each
expression afresh per transaction, and pgjwt's SQL `sign` is planned again.
Here each piece runs in a procedure that COMMITs after every iteration, so
each iteration is its own transaction, with no client round trip; an empty
loop's cost is subtracted. The pieces are our function's own statements
(`components.trigger_function.read_secret` / `authorize`), so the figures
cannot drift from the SQL we ship.
"""

from __future__ import annotations

import statistics
import time
from collections import defaultdict
from dataclasses import dataclass

import psycopg
from psycopg import sql

from bench.measure import insert_one
from bench.variants import SECRET_NAME, TRIGGER_NAME, VARIANTS_BY_KEY
from components.trigger_function import DECLARATIONS, FunctionSpec, authorize, read_secret

PROCEDURE = "public.bench_piece"


@dataclass(frozen=True)
class Piece:
    label: str
    #: PL/pgSQL run once per transaction; `secret` holds the Vault secret beforehand.
    statement: str


def _pieces() -> tuple[Piece, ...]:
    hooks_row = sql.SQL(
        "INSERT INTO supabase_functions.hooks (hook_table_id, hook_name, request_id) VALUES ({}::regclass, {}, i);"
    ).format(sql.Literal(VARIANTS_BY_KEY["b"].table_id.as_string(None)), sql.Literal(TRIGGER_NAME))
    return (
        Piece("INSERT, (b) Supabase webhook (whole path)", insert_one(VARIANTS_BY_KEY["b"]).as_string(None) + ";"),
        Piece(
            "INSERT, (d) ours, pgcrypto (whole path)", insert_one(VARIANTS_BY_KEY["d-pgcrypto"]).as_string(None) + ";"
        ),
        Piece("INSERT, (e) ours, at-least-once (whole path)", insert_one(VARIANTS_BY_KEY["e"]).as_string(None) + ";"),
        Piece("  our Vault read", read_secret(FunctionSpec(secret_name=SECRET_NAME))),
        Piece("  our token + headers, pgcrypto signer", authorize(FunctionSpec(signer="pgcrypto"))),
        Piece("  our token + headers, pgjwt signer", authorize(FunctionSpec(signer="pgjwt"))),
        Piece("  (b)'s supabase_functions.hooks row", hooks_row.as_string(None)),
    )


def _procedure(statement: str) -> sql.Composed:
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
    ).format(sql.SQL(PROCEDURE), sql.Literal(body))


def _run_us(conn: psycopg.Connection, statement: str, iterations: int, secret: str) -> float:
    """Microseconds per iteration of `statement`, each in its own transaction."""
    conn.execute(_procedure(statement))
    started = time.perf_counter()
    conn.execute(sql.SQL("CALL {}(%s, %s)").format(sql.SQL(PROCEDURE)), (iterations, secret))
    return (time.perf_counter() - started) * 1e6 / iterations


def time_pieces(conn: psycopg.Connection, secret: str, rounds: int, iterations: int) -> dict[str, float]:
    """Median per-transaction cost of each piece, in us, net of an empty committing loop.

    `conn` must be in autocommit (a procedure can only COMMIT outside a
    transaction block). Rounds interleave the pieces, each round starting one
    further along. Leaves rows in the tables and the queue; reset afterwards.
    """
    pieces = _pieces()
    samples: dict[str, list[float]] = defaultdict(list)
    for round_no in range(rounds):
        empty = _run_us(conn, "", iterations, secret)
        for offset in range(len(pieces)):
            piece = pieces[(round_no + offset) % len(pieces)]
            samples[piece.label].append(_run_us(conn, piece.statement, iterations, secret) - empty)
    conn.execute(sql.SQL("DROP PROCEDURE {}").format(sql.SQL(PROCEDURE)))
    return {piece.label: statistics.median(samples[piece.label]) for piece in pieces}


def render(costs: dict[str, dict[str, float]], iterations: int, rounds: int) -> str:
    """One column per session kind (e.g. a new session, one that ran bulk inserts), one row per piece."""
    sessions = list(costs)
    lines = [
        f"per transaction, in a procedure that COMMITs after each of {iterations} iterations, minus an empty loop;",
        f"median of {rounds} rounds, in us (no client round trip, so lower than pgbench's figures):",
        f"    {'':<48} " + " ".join(f"{session:>12}" for session in sessions),
    ]
    for label in costs[sessions[0]]:
        lines.append(f"    {label:<48} " + " ".join(f"{costs[session][label]:>12.1f}" for session in sessions))
    return "\n".join(lines)
