-- LOCAL_SUPABASE STAND-IN for supabase/vault 0.3.1 -- written for local tests, not the upstream file.
-- Same table, view, function signatures and PUBLIC revokes as upstream. Encryption differs:
--   * root key: 32 random bytes (hex) in $PGDATA/vault_root.key, written by local_supabase.cluster.
--     Only vault._stand_in_root_key() (SECURITY DEFINER, owner = bootstrap superuser, EXECUTE
--     revoked from PUBLIC) reads it, so neither `postgres` (even with pg_read_all_data) nor
--     service_role/anon/authenticated can obtain it from SQL -- like upstream's key file.
--   * deterministic AEAD: SIV over pgcrypto. iv = HMAC-SHA256(mac_key, nonce, additional, message)
--     truncated to 16 bytes; ciphertext = iv || AES-256-CBC(enc_key, iv, message). Decryption
--     recomputes the iv, so tampering with message, nonce or additional data is detected.
-- pgcrypto must be installed in schema `extensions` (as on Supabase).
\echo Use "CREATE EXTENSION supabase_vault" to load this file. \quit

DO $check$
BEGIN
    IF NOT EXISTS (
        SELECT 1 FROM pg_extension
        WHERE extname = 'pgcrypto' AND extnamespace = 'extensions'::regnamespace
    ) THEN
        RAISE EXCEPTION 'supabase_vault stand-in needs pgcrypto installed in schema extensions';
    END IF;
    IF pg_stat_file('vault_root.key', true) IS NULL THEN
        RAISE EXCEPTION 'supabase_vault stand-in: root key file $PGDATA/vault_root.key is missing'
            USING HINT = 'start the cluster with local_supabase.cluster, which writes it';
    END IF;
END;
$check$;

CREATE FUNCTION vault._stand_in_root_key() RETURNS bytea
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = ''
AS $body$
    SELECT decode(btrim(pg_catalog.pg_read_file('vault_root.key'), E' \n'), 'hex');
$body$;

CREATE FUNCTION vault._crypto_aead_det_encrypt(
    message bytea, additional bytea, key_id bigint, context bytea = 'pgsodium', nonce bytea = NULL
) RETURNS bytea
LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = ''
AS $body$
DECLARE
    root_key bytea := vault._stand_in_root_key();
    subkey_info bytea := pg_catalog.int8send(key_id) || context;
    enc_key bytea := extensions.hmac('vault-enc'::bytea || subkey_info, root_key, 'sha256');
    mac_key bytea := extensions.hmac('vault-mac'::bytea || subkey_info, root_key, 'sha256');
    nonce_bytes bytea := coalesce(nonce, ''::bytea);
    iv bytea;
BEGIN
    iv := substring(extensions.hmac(
        pg_catalog.int4send(length(nonce_bytes)) || nonce_bytes
            || pg_catalog.int4send(length(additional)) || additional || message,
        mac_key, 'sha256') FOR 16);
    RETURN iv || extensions.encrypt_iv(message, enc_key, iv, 'aes-cbc/pad:pkcs');
END;
$body$;

CREATE FUNCTION vault._crypto_aead_det_decrypt(
    message bytea, additional bytea, key_id bigint, context bytea = 'pgsodium', nonce bytea = NULL
) RETURNS bytea
LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = ''
AS $body$
DECLARE
    root_key bytea := vault._stand_in_root_key();
    subkey_info bytea := pg_catalog.int8send(key_id) || context;
    enc_key bytea := extensions.hmac('vault-enc'::bytea || subkey_info, root_key, 'sha256');
    mac_key bytea := extensions.hmac('vault-mac'::bytea || subkey_info, root_key, 'sha256');
    nonce_bytes bytea := coalesce(nonce, ''::bytea);
    iv bytea := substring(message FOR 16);
    plaintext bytea;
BEGIN
    plaintext := extensions.decrypt_iv(substring(message FROM 17), enc_key, iv, 'aes-cbc/pad:pkcs');
    IF iv IS DISTINCT FROM substring(extensions.hmac(
        pg_catalog.int4send(length(nonce_bytes)) || nonce_bytes
            || pg_catalog.int4send(length(additional)) || additional || plaintext,
        mac_key, 'sha256') FOR 16)
    THEN
        RAISE EXCEPTION 'vault: ciphertext verification failed';
    END IF;
    RETURN plaintext;
END;
$body$;

CREATE FUNCTION vault._crypto_aead_det_noncegen() RETURNS bytea
LANGUAGE sql VOLATILE SET search_path = ''
AS $body$
    SELECT extensions.gen_random_bytes(16);
$body$;

CREATE TABLE vault.secrets (
    id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    name text,
    description text NOT NULL DEFAULT '',
    secret text NOT NULL,
    key_id uuid,
    nonce bytea DEFAULT vault._crypto_aead_det_noncegen(),
    created_at timestamptz NOT NULL DEFAULT CURRENT_TIMESTAMP,
    updated_at timestamptz NOT NULL DEFAULT CURRENT_TIMESTAMP
);

COMMENT ON TABLE vault.secrets IS
    'Table with encrypted `secret` column for storing sensitive information on disk.';

CREATE UNIQUE INDEX ON vault.secrets USING btree (name) WHERE name IS NOT NULL;

-- Decrypts on every read. The view runs with its owner's table privileges, but the decrypt
-- function is checked against the caller, hence the EXECUTE grants Supabase adds afterwards.
CREATE VIEW vault.decrypted_secrets AS
SELECT s.id,
       s.name,
       s.description,
       s.secret,
       convert_from(
           vault._crypto_aead_det_decrypt(
               message := decode(s.secret, 'base64'),
               additional := convert_to(s.id::text, 'utf8'),
               key_id := 0,
               context := 'pgsodium'::bytea,
               nonce := s.nonce),
           'utf8') AS decrypted_secret,
       s.key_id,
       s.nonce,
       s.created_at,
       s.updated_at
FROM vault.secrets AS s;

CREATE FUNCTION vault.create_secret(
    new_secret text,
    new_name text = NULL,
    new_description text = '',
    new_key_id uuid = NULL  -- accepted and ignored, as upstream
) RETURNS uuid
LANGUAGE plpgsql SECURITY DEFINER SET search_path = ''
AS $body$
DECLARE
    secret_id uuid := gen_random_uuid();
    secret_nonce bytea := vault._crypto_aead_det_noncegen();
BEGIN
    INSERT INTO vault.secrets (id, secret, name, description, nonce)
    VALUES (
        secret_id,
        encode(vault._crypto_aead_det_encrypt(
            message := convert_to(new_secret, 'utf8'),
            additional := convert_to(secret_id::text, 'utf8'),
            key_id := 0,
            context := 'pgsodium'::bytea,
            nonce := secret_nonce), 'base64'),
        new_name,
        new_description,
        secret_nonce);
    RETURN secret_id;
END;
$body$;

CREATE FUNCTION vault.update_secret(
    secret_id uuid,
    new_secret text = NULL,
    new_name text = NULL,
    new_description text = NULL,
    new_key_id uuid = NULL  -- accepted and ignored, as upstream
) RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path = ''
AS $body$
BEGIN
    UPDATE vault.secrets AS s
       SET secret = CASE
                        WHEN new_secret IS NULL THEN s.secret
                        ELSE encode(vault._crypto_aead_det_encrypt(
                                 message := convert_to(new_secret, 'utf8'),
                                 additional := convert_to(s.id::text, 'utf8'),
                                 key_id := 0,
                                 context := 'pgsodium'::bytea,
                                 nonce := s.nonce), 'base64')
                    END,
           name = coalesce(new_name, s.name),
           description = coalesce(new_description, s.description),
           updated_at = now()
     WHERE s.id = secret_id;
END;
$body$;

REVOKE ALL ON FUNCTION
    vault._stand_in_root_key,
    vault._crypto_aead_det_encrypt,
    vault._crypto_aead_det_decrypt,
    vault._crypto_aead_det_noncegen,
    vault.create_secret,
    vault.update_secret
FROM PUBLIC;

SELECT pg_catalog.pg_extension_config_dump('vault.secrets', '');
