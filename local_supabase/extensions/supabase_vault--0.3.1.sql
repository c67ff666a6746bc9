-- LOCAL_SUPABASE STAND-IN for supabase/vault 0.3.1 -- written for local tests, not the upstream file.
-- Same table, view, function signatures, volatility and PUBLIC revokes as upstream. The three
-- crypto functions are C, as upstream's are, from this stand-in's own supabase_vault.c: libsodium,
-- a root key loaded once by the postmaster (shared_preload_libraries) from $PGDATA/vault_root.key
-- and reachable from no SQL function, and a deterministic AEAD (keyed-BLAKE2b synthetic IV,
-- XChaCha20) whose ciphertexts are not interchangeable with upstream's.
\echo Use "CREATE EXTENSION supabase_vault" to load this file. \quit

CREATE FUNCTION vault._crypto_aead_det_encrypt(
    message bytea, additional bytea, key_id bigint, context bytea = 'pgsodium', nonce bytea = NULL
) RETURNS bytea
AS 'MODULE_PATHNAME', 'vault_stand_in_encrypt'
LANGUAGE c IMMUTABLE;

CREATE FUNCTION vault._crypto_aead_det_decrypt(
    message bytea, additional bytea, key_id bigint, context bytea = 'pgsodium', nonce bytea = NULL
) RETURNS bytea
AS 'MODULE_PATHNAME', 'vault_stand_in_decrypt'
LANGUAGE c IMMUTABLE;

-- Upstream declares this IMMUTABLE; VOLATILE here so that no plan can fold it into a constant.
CREATE FUNCTION vault._crypto_aead_det_noncegen() RETURNS bytea
AS 'MODULE_PATHNAME', 'vault_stand_in_noncegen'
LANGUAGE c VOLATILE;

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
    vault._crypto_aead_det_encrypt,
    vault._crypto_aead_det_decrypt,
    vault._crypto_aead_det_noncegen,
    vault.create_secret,
    vault.update_secret
FROM PUBLIC;

SELECT pg_catalog.pg_extension_config_dump('vault.secrets', '');
