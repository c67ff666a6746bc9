/*
 * LOCAL_SUPABASE STAND-IN for supabase_vault's C library -- written for local tests, not upstream code.
 *
 * Why C: Supabase's Vault decrypts in C with libsodium, using a root key loaded once when the
 * server starts (shared_preload_libraries). A stand-in in PL/pgSQL costs several times more per
 * read, which would misstate what a trigger that reads the Vault costs. This library keeps the
 * real cost structure:
 *   - the root key (64 hex characters in $PGDATA/vault_root.key, written by
 *     local_supabase.cluster) is read once, by the postmaster, and lives only in process
 *     memory: no SQL function returns it;
 *   - every decrypt derives the per-key subkey with crypto_kdf (BLAKE2b), recomputes a
 *     keyed-BLAKE2b synthetic IV and runs XChaCha20, like upstream's deterministic AEAD.
 * The SIV construction is this file's own (length-prefixed additional data, nonce and message
 * under keyed BLAKE2b), so ciphertexts are not interchangeable with real Vault ones.
 */
#include "postgres.h"

#include <stdio.h>

#include <sodium.h>

#include "fmgr.h"
#include "miscadmin.h"
#include "utils/builtins.h"

PG_MODULE_MAGIC;

/* Lets local_supabase.extensions tell this library from a real supabase_vault.so. */
static const char stand_in_marker[] __attribute__((used)) = "LOCAL_SUPABASE STAND-IN supabase_vault";

#define ROOT_KEY_FILE "vault_root.key"
#define ROOT_KEY_HEX_CHARS (2 * crypto_kdf_KEYBYTES)
#define TAG_BYTES 32
#define NONCE_BYTES 16

/* Set once in the postmaster, inherited by every backend; NULL unless preloaded. */
static unsigned char *root_key = NULL;

void		_PG_init(void);

static void
load_root_key(void)
{
	char		hex[ROOT_KEY_HEX_CHARS + 2];
	size_t		read_chars;
	FILE	   *file = fopen(ROOT_KEY_FILE, "r");	/* the postmaster's cwd is $PGDATA */

	if (file == NULL)
		ereport(FATAL,
				(errmsg("vault stand-in: cannot open %s/%s: %m", DataDir, ROOT_KEY_FILE),
				 errhint("Start the cluster with local_supabase.cluster, which writes it.")));
	read_chars = fread(hex, 1, sizeof(hex) - 1, file);
	fclose(file);
	root_key = sodium_malloc(crypto_kdf_KEYBYTES);
	if (root_key == NULL)
		ereport(FATAL, (errmsg("vault stand-in: sodium_malloc failed")));
	if (read_chars < ROOT_KEY_HEX_CHARS ||
		sodium_hex2bin(root_key, crypto_kdf_KEYBYTES, hex, ROOT_KEY_HEX_CHARS, NULL, NULL, NULL) != 0)
		ereport(FATAL, (errmsg("vault stand-in: %s does not hold a 64-character hex key", ROOT_KEY_FILE)));
	sodium_memzero(hex, sizeof(hex));
	sodium_mprotect_readonly(root_key);
	elog(LOG, "vault stand-in: root key loaded");
}

void
_PG_init(void)
{
	if (sodium_init() < 0)
		ereport(ERROR, (errmsg("vault stand-in: sodium_init() failed")));
	if (process_shared_preload_libraries_in_progress && root_key == NULL)
		load_root_key();
}

static bytea *
required_bytea(FunctionCallInfo fcinfo, int arg, const char *name)
{
	if (PG_ARGISNULL(arg))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED), errmsg("vault: %s cannot be NULL", name)));
	return PG_GETARG_BYTEA_PP(arg);
}

/*
 * Two 32-byte keys from the root key for (key_id, context): `mac_key` for the synthetic IV and
 * `stream_key` for XChaCha20.
 */
static void
derive_keys(FunctionCallInfo fcinfo, unsigned char keys[2 * crypto_stream_xchacha20_KEYBYTES])
{
	unsigned char subkey[crypto_kdf_KEYBYTES];
	bytea	   *context = required_bytea(fcinfo, 3, "context");
	char		context_bytes[crypto_kdf_CONTEXTBYTES];

	if (root_key == NULL)
		ereport(ERROR,
				(errmsg("vault: no root key loaded"),
				 errhint("Add supabase_vault to shared_preload_libraries.")));
	if (PG_ARGISNULL(2))
		ereport(ERROR, (errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED), errmsg("vault: key_id cannot be NULL")));
	if (VARSIZE_ANY_EXHDR(context) != crypto_kdf_CONTEXTBYTES)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("vault: context must be %d bytes", crypto_kdf_CONTEXTBYTES)));
	memcpy(context_bytes, VARDATA_ANY(context), crypto_kdf_CONTEXTBYTES);
	crypto_kdf_derive_from_key(subkey, sizeof(subkey), (uint64) PG_GETARG_INT64(2), context_bytes, root_key);
	crypto_generichash(keys, 2 * crypto_stream_xchacha20_KEYBYTES, NULL, 0, subkey, sizeof(subkey));
	sodium_memzero(subkey, sizeof(subkey));
}

static void
absorb(crypto_generichash_state *state, const unsigned char *data, size_t length)
{
	unsigned char prefix[8];
	uint64		n = length;

	for (int i = 0; i < 8; i++, n >>= 8)
		prefix[i] = (unsigned char) (n & 0xff);
	crypto_generichash_update(state, prefix, sizeof(prefix));
	crypto_generichash_update(state, data, length);
}

/* The synthetic IV: keyed BLAKE2b over additional data, nonce and plaintext, each length-prefixed. */
static void
synthetic_iv(FunctionCallInfo fcinfo, const unsigned char *mac_key, const unsigned char *message,
			 size_t length, unsigned char tag[TAG_BYTES])
{
	crypto_generichash_state state;
	bytea	   *additional = required_bytea(fcinfo, 1, "additional");
	bytea	   *nonce = PG_ARGISNULL(4) ? NULL : PG_GETARG_BYTEA_PP(4);

	crypto_generichash_init(&state, mac_key, crypto_stream_xchacha20_KEYBYTES, TAG_BYTES);
	absorb(&state, (unsigned char *) VARDATA_ANY(additional), VARSIZE_ANY_EXHDR(additional));
	if (nonce == NULL)
		absorb(&state, NULL, 0);
	else
		absorb(&state, (unsigned char *) VARDATA_ANY(nonce), VARSIZE_ANY_EXHDR(nonce));
	absorb(&state, message, length);
	crypto_generichash_final(&state, tag, TAG_BYTES);
}

PG_FUNCTION_INFO_V1(vault_stand_in_encrypt);
/* ciphertext || tag, where ciphertext = XChaCha20(stream_key, iv = tag[0:24]) xor message. */
Datum
vault_stand_in_encrypt(PG_FUNCTION_ARGS)
{
	bytea	   *message = required_bytea(fcinfo, 0, "message");
	size_t		length = VARSIZE_ANY_EXHDR(message);
	unsigned char keys[2 * crypto_stream_xchacha20_KEYBYTES];
	bytea	   *result = palloc(VARHDRSZ + length + TAG_BYTES);
	unsigned char *out = (unsigned char *) VARDATA(result);

	SET_VARSIZE(result, VARHDRSZ + length + TAG_BYTES);
	derive_keys(fcinfo, keys);
	synthetic_iv(fcinfo, keys, (unsigned char *) VARDATA_ANY(message), length, out + length);
	crypto_stream_xchacha20_xor(out, (unsigned char *) VARDATA_ANY(message), length, out + length,
								keys + crypto_stream_xchacha20_KEYBYTES);
	sodium_memzero(keys, sizeof(keys));
	PG_RETURN_BYTEA_P(result);
}

PG_FUNCTION_INFO_V1(vault_stand_in_decrypt);
/* Decrypts, then recomputes the tag: a changed ciphertext, nonce or additional data is an error. */
Datum
vault_stand_in_decrypt(PG_FUNCTION_ARGS)
{
	bytea	   *message = required_bytea(fcinfo, 0, "message");
	size_t		total = VARSIZE_ANY_EXHDR(message);
	size_t		length;
	const unsigned char *in = (unsigned char *) VARDATA_ANY(message);
	unsigned char keys[2 * crypto_stream_xchacha20_KEYBYTES];
	unsigned char tag[TAG_BYTES];
	bytea	   *result;

	if (total < TAG_BYTES)
		ereport(ERROR, (errcode(ERRCODE_DATA_EXCEPTION), errmsg("vault: invalid ciphertext")));
	length = total - TAG_BYTES;
	result = palloc(VARHDRSZ + length);
	SET_VARSIZE(result, VARHDRSZ + length);
	derive_keys(fcinfo, keys);
	crypto_stream_xchacha20_xor((unsigned char *) VARDATA(result), in, length, in + length,
								keys + crypto_stream_xchacha20_KEYBYTES);
	synthetic_iv(fcinfo, keys, (unsigned char *) VARDATA(result), length, tag);
	sodium_memzero(keys, sizeof(keys));
	if (sodium_memcmp(tag, in + length, TAG_BYTES) != 0)
	{
		sodium_memzero(VARDATA(result), length);
		ereport(ERROR, (errcode(ERRCODE_DATA_EXCEPTION), errmsg("vault: invalid ciphertext")));
	}
	PG_RETURN_BYTEA_P(result);
}

PG_FUNCTION_INFO_V1(vault_stand_in_noncegen);
Datum
vault_stand_in_noncegen(PG_FUNCTION_ARGS)
{
	bytea	   *result = palloc(VARHDRSZ + NONCE_BYTES);

	SET_VARSIZE(result, VARHDRSZ + NONCE_BYTES);
	randombytes_buf(VARDATA(result), NONCE_BYTES);
	PG_RETURN_BYTEA_P(result);
}
