-- LOCAL_SUPABASE STAND-IN for supabase/pg_net 0.20.4 -- written for local tests, not the upstream file.
-- Same tables, function signatures, defaults, Content-Type rule and privileges as pg_net >= 0.12
-- (SECURITY INVOKER functions; USAGE on schema net and ALL on its tables and sequences granted to
-- PUBLIC). The C helpers (curl URL encoding, net.wake()) come from this stand-in's own pg_net.c;
-- the background worker is replaced by the Python thread in local_supabase.pg_net_worker.
\echo Use "CREATE EXTENSION pg_net" to load this file. \quit

CREATE SCHEMA IF NOT EXISTS net;

CREATE DOMAIN net.http_method AS text
    CHECK (VALUE ILIKE 'get' OR VALUE ILIKE 'post' OR VALUE ILIKE 'delete');

-- Pending requests; the worker deletes them as it picks them up.
CREATE UNLOGGED TABLE net.http_request_queue (
    id bigserial,
    method net.http_method NOT NULL,
    url text NOT NULL,
    headers jsonb,
    body bytea,
    timeout_milliseconds integer NOT NULL
);

-- One row per finished request, written by the worker.
CREATE UNLOGGED TABLE net._http_response (
    id bigint,
    status_code integer,
    content_type text,
    headers jsonb,
    content text,
    timed_out boolean,
    error_msg text,
    created timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX ON net._http_response (created);

-- The C helpers, as upstream (this stand-in's own pg_net.c, using libcurl like pg_net).
CREATE FUNCTION net._urlencode_string(string varchar) RETURNS text
AS 'MODULE_PATHNAME'
LANGUAGE c IMMUTABLE;

CREATE FUNCTION net._encode_url_with_params_array(url text, params_array text[]) RETURNS text
AS 'MODULE_PATHNAME'
LANGUAGE c IMMUTABLE;

CREATE FUNCTION net.wake() RETURNS void
AS 'MODULE_PATHNAME'
LANGUAGE c;

CREATE FUNCTION net.http_get(
    url text,
    params jsonb DEFAULT '{}'::jsonb,
    headers jsonb DEFAULT '{}'::jsonb,
    timeout_milliseconds integer DEFAULT 5000
) RETURNS bigint
LANGUAGE plpgsql
AS $body$
DECLARE
    request_id bigint;
    encoded_params text[];
BEGIN
    SELECT coalesce(array_agg(net._urlencode_string(key) || '=' || net._urlencode_string(value)), '{}')
      INTO encoded_params
      FROM jsonb_each_text(params);

    INSERT INTO net.http_request_queue (method, url, headers, timeout_milliseconds)
    VALUES ('GET', net._encode_url_with_params_array(url, encoded_params), headers, timeout_milliseconds)
    RETURNING id INTO request_id;

    PERFORM net.wake();

    RETURN request_id;
END;
$body$;

CREATE FUNCTION net.http_post(
    url text,
    body jsonb DEFAULT '{}'::jsonb,
    params jsonb DEFAULT '{}'::jsonb,
    headers jsonb DEFAULT '{"Content-Type": "application/json"}'::jsonb,
    timeout_milliseconds integer DEFAULT 5000
) RETURNS bigint
LANGUAGE plpgsql
AS $body$
DECLARE
    request_id bigint;
    encoded_params text[];
    content_type text;
BEGIN
    SELECT header.value
      INTO content_type
      FROM jsonb_each_text(coalesce(headers, '{}'::jsonb)) AS header
     WHERE lower(header.key) = 'content-type'
     LIMIT 1;

    -- Headers given without a Content-Type get JSON's; any other Content-Type is refused
    -- (compared verbatim, so even "application/json; charset=utf-8" is refused, as upstream).
    IF content_type IS NULL THEN
        headers := headers || '{"Content-Type": "application/json"}'::jsonb;
    END IF;

    IF content_type <> 'application/json' THEN
        RAISE EXCEPTION 'Content-Type header must be "application/json"';
    END IF;

    SELECT coalesce(array_agg(net._urlencode_string(key) || '=' || net._urlencode_string(value)), '{}')
      INTO encoded_params
      FROM jsonb_each_text(params);

    INSERT INTO net.http_request_queue (method, url, headers, body, timeout_milliseconds)
    VALUES ('POST', net._encode_url_with_params_array(url, encoded_params), headers,
            convert_to(body::text, 'UTF8'), timeout_milliseconds)
    RETURNING id INTO request_id;

    PERFORM net.wake();

    RETURN request_id;
END;
$body$;

CREATE FUNCTION net.http_delete(
    url text,
    params jsonb DEFAULT '{}'::jsonb,
    headers jsonb DEFAULT '{}'::jsonb,
    timeout_milliseconds integer DEFAULT 5000,
    body jsonb DEFAULT NULL
) RETURNS bigint
LANGUAGE plpgsql
AS $body$
DECLARE
    request_id bigint;
    encoded_params text[];
BEGIN
    SELECT coalesce(array_agg(net._urlencode_string(key) || '=' || net._urlencode_string(value)), '{}')
      INTO encoded_params
      FROM jsonb_each_text(params);

    INSERT INTO net.http_request_queue (method, url, headers, body, timeout_milliseconds)
    VALUES ('DELETE', net._encode_url_with_params_array(url, encoded_params), headers,
            convert_to(body::text, 'UTF8'), timeout_milliseconds)
    RETURNING id INTO request_id;

    PERFORM net.wake();

    RETURN request_id;
END;
$body$;

-- Upstream's privileges since 0.12: everyone may queue requests and read every queued request
-- (headers included) and every response. Functions keep the default EXECUTE for PUBLIC.
GRANT USAGE ON SCHEMA net TO PUBLIC;
GRANT ALL ON ALL SEQUENCES IN SCHEMA net TO PUBLIC;
GRANT ALL ON ALL TABLES IN SCHEMA net TO PUBLIC;
