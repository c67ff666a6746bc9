-- local_supabase bootstrap: run once as the bootstrap superuser `supabase_admin` on a fresh cluster.
-- Reproduces the parts of a Supabase (Postgres 15) database that secure-webhooks touches: roles and
-- their memberships, schema grants and default privileges, the `extensions` schema, Vault with
-- Supabase's grants, the pg_net event trigger, and Database Webhooks' `supabase_functions` schema.
-- Sources: supabase/postgres migrations/db (init-scripts, migrations, schema-15.sql),
-- supabase/postgres ansible/files/postgresql_extension_custom_scripts/supabase_vault/after-create.sql,
-- supabase/supabase docker/volumes/db/webhooks.sql. Passwords are set by local_supabase.bootstrap.

-- Roles -----------------------------------------------------------------------------------------
-- `postgres` is demoted on Supabase: no superuser, but createdb/createrole/replication/bypassrls.
CREATE ROLE postgres LOGIN NOSUPERUSER CREATEDB CREATEROLE REPLICATION BYPASSRLS;
ALTER DATABASE postgres OWNER TO postgres;
GRANT ALL ON DATABASE postgres TO postgres;

-- API roles: created NOINHERIT, switched to INHERIT by 20230529180330_alter_api_roles_for_inherit.
CREATE ROLE anon NOLOGIN INHERIT;
CREATE ROLE authenticated NOLOGIN INHERIT;
CREATE ROLE service_role NOLOGIN INHERIT BYPASSRLS;
ALTER ROLE anon SET statement_timeout = '3s';
ALTER ROLE authenticated SET statement_timeout = '8s';

-- PostgREST logs in as authenticator and SET ROLEs to the role named in the request's JWT.
CREATE ROLE authenticator LOGIN NOINHERIT;
GRANT anon, authenticated, service_role TO authenticator;
ALTER ROLE authenticator SET statement_timeout = '8s';

GRANT anon, authenticated, service_role TO postgres;
GRANT pg_monitor, pg_read_all_data, pg_signal_backend TO postgres;

CREATE ROLE supabase_functions_admin LOGIN NOINHERIT CREATEROLE NOREPLICATION;

ALTER ROLE supabase_admin SET search_path TO "$user", public, auth, extensions;
ALTER ROLE postgres SET search_path TO "$user", public, extensions;

-- Schema public -----------------------------------------------------------------------------------
-- Everything postgres or supabase_admin creates in public is fully granted to the API roles;
-- apps then restrict with RLS. That is why demo tables need no explicit GRANTs.
GRANT USAGE ON SCHEMA public TO postgres, anon, authenticated, service_role;
ALTER DEFAULT PRIVILEGES FOR ROLE postgres IN SCHEMA public
    GRANT ALL ON TABLES TO postgres, anon, authenticated, service_role;
ALTER DEFAULT PRIVILEGES FOR ROLE postgres IN SCHEMA public
    GRANT ALL ON FUNCTIONS TO postgres, anon, authenticated, service_role;
ALTER DEFAULT PRIVILEGES FOR ROLE postgres IN SCHEMA public
    GRANT ALL ON SEQUENCES TO postgres, anon, authenticated, service_role;
ALTER DEFAULT PRIVILEGES FOR ROLE supabase_admin IN SCHEMA public
    GRANT ALL ON TABLES TO postgres, anon, authenticated, service_role;
ALTER DEFAULT PRIVILEGES FOR ROLE supabase_admin IN SCHEMA public
    GRANT ALL ON FUNCTIONS TO postgres, anon, authenticated, service_role;
ALTER DEFAULT PRIVILEGES FOR ROLE supabase_admin IN SCHEMA public
    GRANT ALL ON SEQUENCES TO postgres, anon, authenticated, service_role;

-- Schema extensions -------------------------------------------------------------------------------
CREATE SCHEMA extensions;
GRANT USAGE ON SCHEMA extensions TO postgres, anon, authenticated, service_role;
GRANT ALL ON SCHEMA extensions TO postgres;
ALTER DEFAULT PRIVILEGES IN SCHEMA extensions GRANT ALL ON TABLES TO postgres WITH GRANT OPTION;
ALTER DEFAULT PRIVILEGES IN SCHEMA extensions GRANT ALL ON ROUTINES TO postgres WITH GRANT OPTION;
ALTER DEFAULT PRIVILEGES IN SCHEMA extensions GRANT ALL ON SEQUENCES TO postgres WITH GRANT OPTION;

CREATE EXTENSION "uuid-ossp" WITH SCHEMA extensions;
CREATE EXTENSION pgcrypto WITH SCHEMA extensions;

-- Vault: supabase_vault is preinstalled; Supabase's after-create script then grants it to
-- postgres (with grant option) and service_role only -- anon/authenticated get nothing.
CREATE EXTENSION supabase_vault;
GRANT USAGE ON SCHEMA vault TO postgres WITH GRANT OPTION;
GRANT SELECT, DELETE ON vault.secrets, vault.decrypted_secrets TO postgres WITH GRANT OPTION;
GRANT EXECUTE ON FUNCTION vault.create_secret, vault.update_secret, vault._crypto_aead_det_decrypt
    TO postgres WITH GRANT OPTION;
GRANT USAGE ON SCHEMA vault TO service_role;
GRANT SELECT, DELETE ON vault.secrets, vault.decrypted_secrets TO service_role;
GRANT EXECUTE ON FUNCTION vault.create_secret, vault.update_secret, vault._crypto_aead_det_decrypt
    TO service_role;

-- pg_net access: Supabase's issue_pg_net_access event trigger. For pg_net >= 0.12 it only adds
-- USAGE on schema net (the SECURITY DEFINER rewrite is applied to versions <= 0.11.0 only).
-- SECURITY DEFINER here because supautils runs the whole CREATE EXTENSION as supabase_admin on
-- Supabase, whereas a trusted extension hands control back to the caller before ddl_command_end.
CREATE FUNCTION extensions.grant_pg_net_access() RETURNS event_trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = ''
AS $body$
BEGIN
    IF EXISTS (
        SELECT 1
        FROM pg_event_trigger_ddl_commands() AS ev
        JOIN pg_extension AS ext ON ev.objid = ext.oid
        WHERE ext.extname = 'pg_net'
    ) THEN
        GRANT USAGE ON SCHEMA net TO supabase_functions_admin, postgres, anon, authenticated, service_role;
    END IF;
END;
$body$;
COMMENT ON FUNCTION extensions.grant_pg_net_access() IS 'Grants access to pg_net';
CREATE EVENT TRIGGER issue_pg_net_access ON ddl_command_end WHEN TAG IN ('CREATE EXTENSION')
    EXECUTE FUNCTION extensions.grant_pg_net_access();

-- Database Webhooks (supabase_functions) -----------------------------------------------------------
CREATE SCHEMA supabase_functions AUTHORIZATION supabase_admin;
GRANT USAGE ON SCHEMA supabase_functions TO postgres, anon, authenticated, service_role;
ALTER DEFAULT PRIVILEGES IN SCHEMA supabase_functions
    GRANT ALL ON TABLES TO postgres, anon, authenticated, service_role;
ALTER DEFAULT PRIVILEGES IN SCHEMA supabase_functions
    GRANT ALL ON FUNCTIONS TO postgres, anon, authenticated, service_role;
ALTER DEFAULT PRIVILEGES IN SCHEMA supabase_functions
    GRANT ALL ON SEQUENCES TO postgres, anon, authenticated, service_role;

CREATE TABLE supabase_functions.migrations (
    version text PRIMARY KEY,
    inserted_at timestamptz NOT NULL DEFAULT now()
);
INSERT INTO supabase_functions.migrations (version)
VALUES ('initial'), ('20210809183423_update_grants');

CREATE TABLE supabase_functions.hooks (
    id bigserial PRIMARY KEY,
    hook_table_id integer NOT NULL,
    hook_name text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    request_id bigint
);
CREATE INDEX supabase_functions_hooks_request_id_idx
    ON supabase_functions.hooks USING btree (request_id);
CREATE INDEX supabase_functions_hooks_h_table_id_h_name_idx
    ON supabase_functions.hooks USING btree (hook_table_id, hook_name);
COMMENT ON TABLE supabase_functions.hooks IS 'Supabase Functions Hooks: Audit trail for triggered hooks.';

-- The Dashboard's "Database Webhooks" trigger function (hosted variant, without the retry loop of
-- the self-hosting docker image). TG_ARGV: url, method, headers json, params json, timeout ms.
-- net.* is resolved at run time only, so this works before pg_net is installed.
CREATE FUNCTION supabase_functions.http_request() RETURNS trigger
LANGUAGE plpgsql
AS $body$
DECLARE
    request_id bigint;
    payload jsonb;
    url text := TG_ARGV[0]::text;
    method text := TG_ARGV[1]::text;
    headers jsonb DEFAULT '{}'::jsonb;
    params jsonb DEFAULT '{}'::jsonb;
    timeout_ms integer DEFAULT 1000;
BEGIN
    IF url IS NULL OR url = 'null' THEN
        RAISE EXCEPTION 'url argument is missing';
    END IF;
    IF method IS NULL OR method = 'null' THEN
        RAISE EXCEPTION 'method argument is missing';
    END IF;

    IF TG_ARGV[2] IS NULL OR TG_ARGV[2] = 'null' THEN
        headers := '{"Content-Type": "application/json"}'::jsonb;
    ELSE
        headers := TG_ARGV[2]::jsonb;
    END IF;
    IF TG_ARGV[3] IS NULL OR TG_ARGV[3] = 'null' THEN
        params := '{}'::jsonb;
    ELSE
        params := TG_ARGV[3]::jsonb;
    END IF;
    IF TG_ARGV[4] IS NULL OR TG_ARGV[4] = 'null' THEN
        timeout_ms := 1000;
    ELSE
        timeout_ms := TG_ARGV[4]::integer;
    END IF;

    CASE
        WHEN method = 'GET' THEN
            SELECT http_get INTO request_id
            FROM net.http_get(url, params, headers, timeout_ms);
        WHEN method = 'POST' THEN
            payload := jsonb_build_object(
                'old_record', OLD,
                'record', NEW,
                'type', TG_OP,
                'table', TG_TABLE_NAME,
                'schema', TG_TABLE_SCHEMA);
            SELECT http_post INTO request_id
            FROM net.http_post(url, payload, params, headers, timeout_ms);
        ELSE
            RAISE EXCEPTION 'method argument % is invalid', method;
    END CASE;

    INSERT INTO supabase_functions.hooks (hook_table_id, hook_name, request_id)
    VALUES (TG_RELID, TG_NAME, request_id);

    RETURN NEW;
END;
$body$;

GRANT ALL PRIVILEGES ON SCHEMA supabase_functions TO supabase_functions_admin;
GRANT ALL PRIVILEGES ON ALL TABLES IN SCHEMA supabase_functions TO supabase_functions_admin;
GRANT ALL PRIVILEGES ON ALL SEQUENCES IN SCHEMA supabase_functions TO supabase_functions_admin;
ALTER ROLE supabase_functions_admin SET search_path = supabase_functions;
ALTER TABLE supabase_functions.migrations OWNER TO supabase_functions_admin;
ALTER TABLE supabase_functions.hooks OWNER TO supabase_functions_admin;
ALTER FUNCTION supabase_functions.http_request() OWNER TO supabase_functions_admin;
GRANT supabase_functions_admin TO postgres;

ALTER FUNCTION supabase_functions.http_request() SECURITY DEFINER;
ALTER FUNCTION supabase_functions.http_request() SET search_path = supabase_functions;
REVOKE ALL ON FUNCTION supabase_functions.http_request() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION supabase_functions.http_request() TO postgres, anon, authenticated, service_role;
