"""The SQL of the secure trigger function: one renderer, two signers.

The seed's function was almost right; this one fixes what broke in practice:
- SECURITY DEFINER, so the inserting role (e.g. `authenticated`) needs no
  access to the Vault and never sees the secret or the token;
- `SET search_path = ''` and schema-qualified names, so `sign()` resolves no
  matter the inserting role's search_path (and nobody can shadow it);
- the token is assigned to a variable before `net.http_post(...)`: PL/pgSQL
  re-prepares a non-simple expression that calls an SQL function on every
  call, which made the seed's shape 4x slower in bulk;
- one Vault read and one signature per *statement* when the trigger hands us
  a transition table: every row still gets its own request and the same
  payload; the token is byte-identical to a per-row one within a second.

The body is rendered from config only (secret name, claims, TTL, timeout),
never from the secret itself, and it is deterministic so that `read` can
detect an out-of-band edit by comparing it with the catalog.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from psycopg import sql

from secure_webhooks.delivery import ordering
from secure_webhooks.delivery.outbox import EVENTS as OUTBOX_EVENTS
from secure_webhooks.delivery.outbox import SCHEMA as OUTBOX_SCHEMA

#: The transition tables our statement-level triggers pass to the function.
NEW_ROWS = "new_rows"
OLD_ROWS = "old_rows"

#: What the key id is an HMAC of, keyed by the signing key (docs/key-rotation.md, "Key ids").
KEY_ID_LABEL = "secure-webhooks key id v1"
#: Characters of base64url kept: 96 bits, so two keys never share an id by chance.
KEY_ID_CHARS = 16


def base64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def key_id(secret: str | bytes) -> str:
    """The `kid` of a key: base64url(HMAC-SHA256(key, KEY_ID_LABEL)), its first KEY_ID_CHARS characters.

    Derived from the key itself, so a verifier computes the ids of the keys it holds and needs no
    list of names kept in step with the Vault; a pseudo-random function of the key, so the id tells
    nothing about the key that a token signed with it did not already (each token is an HMAC of known
    text under that key). A Vault secret's name would not do: the name stays while the key changes.
    """
    key = secret.encode() if isinstance(secret, str) else secret
    return base64url(hmac.new(key, KEY_ID_LABEL.encode(), hashlib.sha256).digest())[:KEY_ID_CHARS]


def jwt_header(kid: str) -> str:
    """The JOSE header every token carries: members sorted, no spaces (`jwt_header_statement` in SQL)."""
    return f'{{"alg":"HS256","kid":"{kid}","typ":"JWT"}}'


@dataclass(frozen=True)
class FunctionSpec:
    """Everything the function body depends on (none of it secret)."""

    secret_name: str = "app_jwt_secret"
    signer: str = "pgcrypto"
    claims: Mapping[str, Any] = field(
        default_factory=lambda: {"role": "service_role", "iss": "supabase", "sub": "orchestrator"}
    )
    token_ttl_seconds: int = 3600
    timeout_ms: int = 5000
    schema: str = "public"
    name: str = "notify_orchestrator_secure"
    #: "direct" posts each row through pg_net at once (the seed); "at-least-once" only writes the
    #: outbox, and the reconciler signs and sends (components/secure_webhooks/delivery/reconciler.py).
    mode: str = "direct"
    #: Bind each token to its request: `jti` (the event id, or a fresh UUID per direct request) and
    #: `body_sha256` (of the exact bytes pg_net sends). One signature per row instead of per statement.
    bind_request: bool = True
    #: Also `aud`: the exact URL the request is posted to (README, "Hardening").
    audience: bool = False
    #: The Vault secret (whsec_...) for Standard Webhooks' webhook-timestamp/-signature; None: not sent.
    webhook_secret_name: str | None = None
    #: The Vault secret (whsec_...) of the key being rotated out: its signature is sent as well, until
    #: the key is retired (docs/key-rotation.md); None: one signature.
    previous_webhook_secret_name: str | None = None
    #: "per-row": each outbox row also records its commit sequence and row key (delivery/ordering.py).
    ordering: str = ordering.DEFAULT_ORDERING

    @property
    def qualified_name(self) -> str:
        return f"{self.schema}.{self.name}"


def sql_literal(value: Any) -> str:
    """A value as an SQL literal, for SQL text rendered ahead of time (function bodies)."""
    return sql.Literal(value).as_string(None)


def urlsafe_base64(expr: str) -> str:
    """SQL for base64url without padding: pgjwt's url_encode, translate(…, E'+/=\\n', '-_'), to the byte.

    Written with replace() because translate() costs about 2.3 us on every
    single-row insert here, and the chain 1.2 us (bench/README.md).
    """
    encoded = f"pg_catalog.encode({expr}, 'base64')"
    return (
        f"pg_catalog.rtrim(pg_catalog.replace(pg_catalog.replace(pg_catalog.replace({encoded}, E'\\n', ''), "
        "'+', '-'), '/', '_'), '=')"
    )


def body_sha256_expression(body: str) -> str:
    """SQL for the `body_sha256` claim of a jsonb `body`: pg_net sends convert_to(body::text, 'UTF8')."""
    return urlsafe_base64(f"pg_catalog.sha256(pg_catalog.convert_to(({body})::text, 'UTF8'))")


def canonical_claims(claims: Mapping[str, Any]) -> str:
    """The configured claims as the compact JSON the token carries: keys sorted, no spaces.

    This text, not a map, is what the program hands the providers: Pulumi carries a
    map's numbers as floats (42 would be signed as 42.0, a 23-digit integer as
    1.2345678901234568e+22) and drops its null values, so the claims travel as this
    string and are parsed back with `claims_from_props`, exact.
    """
    return json.dumps(dict(claims), sort_keys=True, separators=(",", ":"), allow_nan=False)


def claims_from_props(value: str | Mapping[str, Any]) -> dict[str, Any]:
    """The claims from provider inputs or state: canonical JSON text, or (state written by
    older versions) a map, used as it stands so that their installed bodies still compare equal."""
    if isinstance(value, str):
        claims = json.loads(value)
        if not isinstance(claims, dict):
            raise ValueError("claims must be a JSON object")
        return claims
    return dict(value)


def claims_expression(spec: FunctionSpec, *, jti: str | None = None, body: str | None = None, url: str = "") -> str:
    """SQL text of the claims as compact JSON, with `iat`/`exp` from the `issued_at` variable.

    Built as text rather than jsonb: the configured claims are serialised once,
    here, so each insert only concatenates two numbers into a literal. Config
    validation guarantees the claims are a non-empty object without iat/exp.
    With binding, `jti` (an SQL uuid, JSON-safe as it stands) and `body` (an SQL
    jsonb) add `jti` and `body_sha256`, and with `spec.audience`, `url` adds `aud`.
    """
    configured = canonical_claims(spec.claims)
    opening = sql_literal(configured[:-1] + ',"iat":')
    extra = ""
    if jti is not None:
        extra += f""" || ',"jti":"' || {jti} || '"'"""
    if body is not None and spec.bind_request:
        extra += f""" || ',"body_sha256":"' || {body_sha256_expression(body)} || '"'"""
    if url and spec.audience:
        extra += f""" || ',"aud":' || pg_catalog.to_json(({url})::text)::text"""
    return f"""{opening} || issued_at || ',"exp":' || (issued_at + {int(spec.token_ttl_seconds)}){extra} || '}}'"""


def key_id_expression(key: str) -> str:
    """SQL for `key_id` of the text key `key` (pgcrypto's hmac takes the key as text, i.e. its UTF-8 bytes)."""
    mac = f"extensions.hmac({sql_literal(KEY_ID_LABEL)}, {key}, 'sha256')"
    return f"pg_catalog.left({urlsafe_base64(mac)}, {KEY_ID_CHARS})"


def jwt_header_statement() -> str:
    """PL/pgSQL that sets `jwt_header` (the encoded `jwt_header(kid)` and its dot) from the `secret` variable.

    Once per statement (direct) or round (reconciler), beside the one Vault read: the key is the same
    for every token signed with it.
    """
    header = f"""'{{"alg":"HS256","kid":"' || {key_id_expression("secret")} || '","typ":"JWT"}}'"""
    encoded = urlsafe_base64(f"pg_catalog.convert_to({header}, 'UTF8')")
    return f"jwt_header := {encoded} || '.';"


def _signature(signer: str, signing_input: str) -> str:
    """SQL for the HS256 signature of `signing_input` with the `secret` variable, base64url.

    pgjwt's `sign()` writes its own header, without `kid`; its `algorithm_sign` signs what we give it,
    so both signers still mint byte-identical tokens.
    """
    if signer == "pgjwt":
        return f"extensions.algorithm_sign({signing_input}, secret, 'HS256')"
    if signer == "pgcrypto":
        return urlsafe_base64(f"extensions.hmac({signing_input}, secret, 'sha256')")
    raise ValueError(f"unknown signer {signer!r}")


def sign_statement(signer: str) -> str:
    """PL/pgSQL that sets `token` from the text `claims` (JSON), `jwt_header` and `secret` variables."""
    payload = urlsafe_base64("pg_catalog.convert_to(claims, 'UTF8')")
    signature = _signature(signer, "signing_input")
    return f"signing_input := jwt_header || {payload};\n  token := signing_input || '.' || {signature};"


def token_joins(signer: str, claims: str) -> str:
    """LATERAL joins that sign `claims` (SQL text of JSON) with the `secret` variable into `t.token`.

    The set-based twin of `sign_statement`, for one token per row in a single statement.
    """
    payload = urlsafe_base64("pg_catalog.convert_to(c.claims, 'UTF8')")
    signature = _signature(signer, "s.signing_input")
    return (
        f"\n    CROSS JOIN LATERAL (SELECT {claims} AS claims) AS c"
        f"\n    CROSS JOIN LATERAL (SELECT jwt_header || {payload} AS signing_input) AS s"
        f"\n    CROSS JOIN LATERAL (SELECT s.signing_input || '.' || {signature} AS token) AS t"
    )


def _payload(record_expr: str, old_expr: str) -> str:
    """The seed's payload; pg_net sends the jsonb's text form of it.

    `table` and `schema` name the table the webhook was configured on: a trigger on a partitioned
    table fires on the partition holding the row and passes the configured names as its second and
    third arguments (trigger_provider.firing).
    """
    return (
        f"pg_catalog.jsonb_build_object('old_record', {old_expr}, 'record', {record_expr},\n"
        "        'type', TG_OP, 'table', COALESCE(TG_ARGV[2], TG_TABLE_NAME),"
        " 'schema', COALESCE(TG_ARGV[1], TG_TABLE_SCHEMA))"
    )


def _post(record_expr: str, old_expr: str, timeout_ms: int, source: str = "") -> str:
    return (
        "PERFORM net.http_post(\n"
        "      TG_ARGV[0],\n"
        f"      {_payload(record_expr, old_expr)},\n"
        "      '{}'::jsonb,\n"
        "      headers,\n"
        f"      {int(timeout_ms)}\n"
        f"    ){source};"
    )


def standard_webhook_headers(spec: FunctionSpec, event_id: str, body: str) -> str:
    """Extra jsonb_build_object pairs: Standard Webhooks' timestamp and v1 signature of "id.timestamp.body".

    Uses the `issued_at` and `webhook_key` (the decoded whsec_ key) variables; empty when off. While a
    key is rotated out (`previous_webhook_secret_name`), `webhook-signature` is the spec's
    space-separated list: the signature with `previous_webhook_key` follows, unless that key has left
    the Vault.
    """
    if spec.webhook_secret_name is None:
        return ""
    signed = f"pg_catalog.convert_to({event_id} || '.' || issued_at || '.' || ({body})::text, 'UTF8')"

    def signature(key: str) -> str:
        return f"pg_catalog.encode(extensions.hmac({signed}, {key}, 'sha256'), 'base64')"

    value = f"'v1,' || {signature('webhook_key')}"
    if spec.previous_webhook_secret_name is not None:
        value += f" || COALESCE(' v1,' || {signature('previous_webhook_key')}, '')"
    return f", 'webhook-timestamp', issued_at::text, 'webhook-signature', {value}"


def _read_whsec(name: str, into: str) -> str:
    return f"""SELECT pg_catalog.decode(pg_catalog.substr(s.decrypted_secret, 7), 'base64') INTO {into}
    FROM vault.decrypted_secrets AS s
   WHERE s.name = {sql_literal(name)};"""


def read_webhook_key(spec: FunctionSpec, on_missing: str) -> str:
    """PL/pgSQL that sets `webhook_key` from the Vault's whsec_ secret, then runs `on_missing` if absent;
    and `previous_webhook_key` from the key being rotated out, if any (NULL once it has left the Vault)."""
    if spec.webhook_secret_name is None:
        return ""
    previous = ""
    if spec.previous_webhook_secret_name is not None:
        previous = "\n  " + _read_whsec(spec.previous_webhook_secret_name, "previous_webhook_key")
    return f"""{_read_whsec(spec.webhook_secret_name, "webhook_key")}
  IF webhook_key IS NULL THEN
    {on_missing}
  END IF;{previous}"""


def missing_secret_error(name: str) -> str:
    return sql_literal(f"{name} not found in vault")


def _post_bound(spec: FunctionSpec, record_expr: str, old_expr: str, rows: str = "") -> str:
    """One request per row, each with its own token bound to that row's body and a fresh id.

    The id is the token's `jti` and the `webhook-id` header, as in at-least-once mode (there it is
    the event id, the same on every retry; here each request is sent once).
    """
    source = f"{rows}\n    CROSS JOIN LATERAL " if rows else ""
    claims = claims_expression(spec, jti="p.id", body="p.body", url="TG_ARGV[0]")
    return (
        "PERFORM net.http_post(\n"
        "      TG_ARGV[0],\n"
        "      p.body,\n"
        "      '{}'::jsonb,\n"
        "      pg_catalog.jsonb_build_object(\n"
        "        'Content-Type', 'application/json', 'Authorization', 'Bearer ' || t.token, 'webhook-id', p.id"
        f"{standard_webhook_headers(spec, 'p.id', 'p.body')}),\n"
        f"      {int(spec.timeout_ms)}\n"
        "    )\n"
        # The id is drawn with the row's payload: a LATERAL of its own that named no row would be
        # evaluated once per statement, giving every row the same id.
        f"    FROM {source}(SELECT {_payload(record_expr, old_expr)} AS body, pg_catalog.gen_random_uuid() AS id) AS p"
        f"{token_joins(spec.signer, claims)};"
    )


#: The variables of the function body; `read_secret` and `authorize` assign them.
DECLARATIONS = """  secret text;
  jwt_header text;
  issued_at bigint;
  claims text;
  signing_input text;
  token text;
  headers jsonb;"""


def read_secret(spec: FunctionSpec) -> str:
    """PL/pgSQL that sets `secret` from the Vault, raising the seed's error when it is missing."""
    missing = missing_secret_error(spec.secret_name)
    return f"""SELECT s.decrypted_secret INTO secret
    FROM vault.decrypted_secrets AS s
   WHERE s.name = {sql_literal(spec.secret_name)};
  IF secret IS NULL THEN
    RAISE EXCEPTION USING MESSAGE = {missing},
      HINT = 'Create it with vault.create_secret() or set secure-webhooks:jwtSecret and run pulumi up.';
  END IF;"""


def authorize(spec: FunctionSpec) -> str:
    """PL/pgSQL that sets `headers`, with a token signed now by `secret`, for the requests."""
    return f"""{jwt_header_statement()}
  issued_at := pg_catalog.floor(pg_catalog.date_part('epoch', pg_catalog.clock_timestamp()))::bigint;
  claims := {claims_expression(spec)};
  {sign_statement(spec.signer)}
  headers := pg_catalog.jsonb_build_object(
    'Content-Type', 'application/json',
    'Authorization', 'Bearer ' || token);"""


def _enqueue(record_expr: str, old_expr: str, source: str = "", *, ordered: bool = False) -> str:
    columns = f"INSERT INTO {OUTBOX_SCHEMA}.{OUTBOX_EVENTS} (webhook, url, payload"
    if ordered:
        # The payload is built once, in a LATERAL of its own (OFFSET 0: not pulled up, which would build it
        # once for each reference), and the row key read from it.
        rows = f"{source}\n      CROSS JOIN LATERAL " if source else "FROM "
        return (
            f"{columns}, {ordering.COLUMNS})\n    SELECT TG_NAME, TG_ARGV[0], p.body, {ordering.values('p.body')}\n"
            f"      {rows}(SELECT {_payload(record_expr, old_expr)} AS body OFFSET 0) AS p;"
        )
    if not source:
        return f"{columns})\n    VALUES (TG_NAME, TG_ARGV[0], {_payload(record_expr, old_expr)});"
    return f"{columns})\n    SELECT TG_NAME, TG_ARGV[0], {_payload(record_expr, old_expr)}\n      {source};"


def render_outbox_body(order: str = ordering.DEFAULT_ORDERING) -> str:
    """The at-least-once body: one outbox row per affected row, nothing else.

    No Vault read, no signature and no pg_net call on the user's insert: a
    missing secret or a dead orchestrator can never fail or slow it, and the
    session never accumulates pg_net's per-transaction callbacks (bench/README.md).
    The trigger's name identifies the webhook. With per-row order the row's
    commit sequence and key go with it (delivery/ordering.py); without, the
    body is the same as before ordering existed.
    """
    ordered = order == "per-row"
    declarations, primary_key = (ordering.DECLARATIONS, f"\n  {ordering.READ_PRIMARY_KEY}") if ordered else ("", "")
    return f"""
{declarations}BEGIN{primary_key}
  IF TG_LEVEL = 'ROW' THEN
    {_enqueue("NEW", "OLD", ordered=ordered)}
  ELSIF TG_OP = 'DELETE' THEN
    {_enqueue("NULL", "pg_catalog.to_jsonb(r)", f"FROM {OLD_ROWS} AS r", ordered=ordered)}
  ELSE
    {_enqueue("pg_catalog.to_jsonb(r)", "NULL", f"FROM {NEW_ROWS} AS r", ordered=ordered)}
  END IF;
  RETURN NULL;
END
"""


def render_body(spec: FunctionSpec) -> str:
    """The PL/pgSQL source, exactly as PostgreSQL stores it in pg_proc.prosrc.

    Every statement here runs on each single-row insert, and PL/pgSQL sets up
    each expression anew in every transaction, so the body is kept to the
    statements the job needs, with constants rendered in rather than held in variables.
    """
    if spec.mode == "at-least-once":
        return render_outbox_body(spec.ordering)
    if spec.bind_request:
        return render_bound_body(spec)
    return f"""
DECLARE
{DECLARATIONS}
BEGIN
  {read_secret(spec)}

  {authorize(spec)}

  IF TG_LEVEL = 'ROW' THEN
    {_post("NEW", "OLD", spec.timeout_ms)}
  ELSIF TG_OP = 'DELETE' THEN
    {_post("NULL", "pg_catalog.to_jsonb(r)", spec.timeout_ms, f" FROM {OLD_ROWS} AS r")}
  ELSE
    {_post("pg_catalog.to_jsonb(r)", "NULL", spec.timeout_ms, f" FROM {NEW_ROWS} AS r")}
  END IF;
  RETURN NULL;
END
"""


def render_bound_body(spec: FunctionSpec) -> str:
    """The direct body with one token per request: still one Vault read per statement."""
    raise_missing = (
        f"RAISE EXCEPTION USING MESSAGE = {missing_secret_error(spec.webhook_secret_name or '')},\n"
        "      HINT = 'Create it with vault.create_secret() or set secure-webhooks:webhookSecret and run pulumi up.';"
    )
    return f"""
DECLARE
  secret text;
  jwt_header text;
  webhook_key bytea;
  previous_webhook_key bytea;
  issued_at bigint;
BEGIN
  {read_secret(spec)}
  {jwt_header_statement()}
  {read_webhook_key(spec, raise_missing)}
  issued_at := pg_catalog.floor(pg_catalog.date_part('epoch', pg_catalog.clock_timestamp()))::bigint;

  IF TG_LEVEL = 'ROW' THEN
    {_post_bound(spec, "NEW", "OLD")}
  ELSIF TG_OP = 'DELETE' THEN
    {_post_bound(spec, "NULL", "pg_catalog.to_jsonb(r)", f"{OLD_ROWS} AS r")}
  ELSE
    {_post_bound(spec, "pg_catalog.to_jsonb(r)", "NULL", f"{NEW_ROWS} AS r")}
  END IF;
  RETURN NULL;
END
"""


def body_sha256(body: str) -> str:
    return hashlib.sha256(body.encode()).hexdigest()


def create_statement(spec: FunctionSpec) -> sql.Composed:
    """CREATE OR REPLACE keeps the function's oid, so triggers never point at nothing.

    The body is passed as a literal, not dollar-quoted, so no configured value
    can end the quoting early. `plan_cache_mode = force_generic_plan` keeps a
    single-row insert as cheap on a pooled connection that once ran a bulk
    insert as on a fresh one: otherwise the plan cache, having priced custom
    plans over thousands of transition-table rows, goes on planning the POST
    statement afresh for every later insert (bench/README.md).
    """
    return sql.SQL(
        "CREATE OR REPLACE FUNCTION {}.{}() RETURNS trigger LANGUAGE plpgsql "
        "SECURITY DEFINER SET search_path = '' SET plan_cache_mode = force_generic_plan AS {}"
    ).format(sql.Identifier(spec.schema), sql.Identifier(spec.name), sql.Literal(render_body(spec)))
