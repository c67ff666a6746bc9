-- LOCAL_SUPABASE STAND-IN for michelp/pgjwt 0.2.0 -- written for local tests, not the upstream file.
-- Keeps upstream's signatures, semantics and cost profile: LANGUAGE sql functions built from CTEs
-- that call url_encode/algorithm_sign and pgcrypto's hmac(), which must live in the same schema
-- (on Supabase both live in `extensions`).
\echo Use "CREATE EXTENSION pgjwt" to load this file. \quit

CREATE FUNCTION url_encode(data bytea) RETURNS text
LANGUAGE sql IMMUTABLE
AS $body$
    -- base64 -> base64url without padding; encode() wraps lines every 76 chars, drop those too.
    SELECT translate(encode(data, 'base64'), E'+/=\n', '-_');
$body$;

CREATE FUNCTION url_decode(data text) RETURNS bytea
LANGUAGE sql IMMUTABLE
AS $body$
    WITH standard AS (
        SELECT translate(data, '-_', '+/') AS b64
    )
    SELECT decode(standard.b64 || repeat('=', (4 - length(standard.b64) % 4) % 4), 'base64')
    FROM standard;
$body$;

CREATE FUNCTION algorithm_sign(signables text, secret text, algorithm text) RETURNS text
LANGUAGE sql IMMUTABLE
AS $body$
    WITH digest AS (
        -- An unknown algorithm maps to '' so pgcrypto raises "Cannot use "": No such hash algorithm".
        SELECT CASE algorithm
                   WHEN 'HS256' THEN 'sha256'
                   WHEN 'HS384' THEN 'sha384'
                   WHEN 'HS512' THEN 'sha512'
                   ELSE ''
               END AS name
    )
    SELECT @extschema@.url_encode(@extschema@.hmac(signables, secret, digest.name))
    FROM digest;
$body$;

CREATE FUNCTION sign(payload json, secret text, algorithm text DEFAULT 'HS256') RETURNS text
LANGUAGE sql IMMUTABLE
AS $body$
    WITH
        encoded_header AS (
            SELECT @extschema@.url_encode(
                convert_to('{"alg":"' || algorithm || '","typ":"JWT"}', 'utf8')) AS part
        ),
        encoded_payload AS (
            -- json keeps its input text verbatim, so the claims are signed exactly as written.
            SELECT @extschema@.url_encode(convert_to(payload::text, 'utf8')) AS part
        ),
        signing_input AS (
            SELECT h.part || '.' || p.part AS part
            FROM encoded_header AS h, encoded_payload AS p
        )
    SELECT s.part || '.' || @extschema@.algorithm_sign(s.part, secret, algorithm)
    FROM signing_input AS s;
$body$;

CREATE FUNCTION try_cast_double(inp text) RETURNS double precision
LANGUAGE plpgsql IMMUTABLE
AS $body$
BEGIN
    RETURN inp::double precision;
EXCEPTION
    WHEN OTHERS THEN
        RETURN NULL;
END;
$body$;

CREATE FUNCTION verify(token text, secret text, algorithm text DEFAULT 'HS256')
RETURNS TABLE(header json, payload json, valid boolean)
LANGUAGE sql IMMUTABLE
AS $body$
    SELECT
        decoded.header,
        decoded.payload,
        -- nbf/exp that are missing or not numbers leave that side of the range unbounded.
        decoded.signature_ok AND tstzrange(
            to_timestamp(@extschema@.try_cast_double(decoded.payload ->> 'nbf')),
            to_timestamp(@extschema@.try_cast_double(decoded.payload ->> 'exp'))
        ) @> CURRENT_TIMESTAMP
    FROM (
        SELECT
            convert_from(@extschema@.url_decode(parts[1]), 'utf8')::json AS header,
            convert_from(@extschema@.url_decode(parts[2]), 'utf8')::json AS payload,
            parts[3] = @extschema@.algorithm_sign(parts[1] || '.' || parts[2], secret, algorithm)
                AS signature_ok
        FROM regexp_split_to_array(token, '\.') AS parts
    ) AS decoded;
$body$;
