/*
 * LOCAL_SUPABASE STAND-IN for pg_net's SQL-callable C helpers -- written for local tests, not upstream code.
 *
 * Why C: pg_net's URL helpers and net.wake() are C functions; `net.http_post` calls them for
 * every request. Written in SQL they cost more than the rest of http_post, which would inflate
 * what every webhook variant pays per request. Like pg_net, the URL helpers use libcurl
 * (curl_easy_escape and the URL API), so URLs are parsed, normalised and rejected as curl does.
 * There is no background worker here: local_supabase.pg_net_worker polls the queue instead.
 *
 * net.wake() keeps upstream's (0.20.4, still so at its HEAD) cost model on purpose: every
 * transaction that queues a request registers one more transaction callback with
 * RegisterXactCallback, and nothing ever unregisters them. PostgreSQL calls every registered
 * callback at every transaction event of the session, so a connection that has fired N webhooks
 * pays N callback calls per event on each later transaction, webhook or not. Tests of
 * long-lived (pooled) sessions must see that slowdown, so the leak is real here too.
 */
#include "postgres.h"

#include <curl/curl.h>

#include "access/xact.h"
#include "fmgr.h"
#include "utils/array.h"
#include "utils/builtins.h"

PG_MODULE_MAGIC;

/* Lets local_supabase.extensions tell this library from a real pg_net.so. */
static const char stand_in_marker[] __attribute__((used)) = "LOCAL_SUPABASE STAND-IN pg_net";

PG_FUNCTION_INFO_V1(_urlencode_string);
/* Percent-encodes every byte outside RFC 3986's unreserved set. */
Datum
_urlencode_string(PG_FUNCTION_ARGS)
{
	text	   *string;
	char	   *encoded;
	text	   *result;

	if (PG_ARGISNULL(0))
		PG_RETURN_NULL();
	string = PG_GETARG_TEXT_PP(0);
	encoded = curl_easy_escape(NULL, VARDATA_ANY(string), (int) VARSIZE_ANY_EXHDR(string));
	if (encoded == NULL)
		PG_RETURN_NULL();
	result = cstring_to_text(encoded);
	curl_free(encoded);
	PG_RETURN_TEXT_P(result);
}

PG_FUNCTION_INFO_V1(_encode_url_with_params_array);
/* The URL as curl normalises it, with each already-encoded key=value appended to its query. */
Datum
_encode_url_with_params_array(PG_FUNCTION_ARGS)
{
	char	   *url;
	CURLU	   *handle;
	CURLUcode	status;
	ArrayIterator params;
	Datum		param;
	bool		is_null;
	char	   *full_url = NULL;
	text	   *result;

	if (PG_ARGISNULL(0) || PG_ARGISNULL(1))
		PG_RETURN_NULL();
	url = text_to_cstring(PG_GETARG_TEXT_PP(0));
	handle = curl_url();
	if (handle == NULL)
		ereport(ERROR, (errcode(ERRCODE_OUT_OF_MEMORY), errmsg("curl_url() failed")));
	status = curl_url_set(handle, CURLUPART_URL, url, 0);
	if (status != CURLUE_OK)
	{
		curl_url_cleanup(handle);
		ereport(ERROR, (errmsg("invalid URL \"%s\": %s", url, curl_url_strerror(status))));
	}
	params = array_create_iterator(PG_GETARG_ARRAYTYPE_P(1), 0, NULL);
	while (array_iterate(params, &param, &is_null))
	{
		char	   *pair;

		if (is_null)
			continue;
		pair = TextDatumGetCString(param);
		status = curl_url_set(handle, CURLUPART_QUERY, pair, CURLU_APPENDQUERY);
		if (status != CURLUE_OK)
		{
			curl_url_cleanup(handle);
			ereport(ERROR, (errmsg("invalid URL \"%s\": %s", pair, curl_url_strerror(status))));
		}
		pfree(pair);
	}
	array_free_iterator(params);
	status = curl_url_get(handle, CURLUPART_URL, &full_url, 0);
	curl_url_cleanup(handle);
	if (status != CURLUE_OK)
		ereport(ERROR, (errmsg("failed to encode URL \"%s\": %s", url, curl_url_strerror(status))));
	result = cstring_to_text(full_url);
	curl_free(full_url);
	PG_RETURN_TEXT_P(result);
}

/* Set by wake(), cleared at the end of the transaction: one registration per transaction. */
static bool wake_requested = false;

static const char *
xact_event_text(XactEvent event)
{
	switch (event)
	{
		case XACT_EVENT_COMMIT:
			return "XACT_EVENT_COMMIT";
		case XACT_EVENT_PARALLEL_COMMIT:
			return "XACT_EVENT_PARALLEL_COMMIT";
		case XACT_EVENT_ABORT:
			return "XACT_EVENT_ABORT";
		case XACT_EVENT_PARALLEL_ABORT:
			return "XACT_EVENT_PARALLEL_ABORT";
		case XACT_EVENT_PREPARE:
			return "XACT_EVENT_PREPARE";
		case XACT_EVENT_PRE_COMMIT:
			return "XACT_EVENT_PRE_COMMIT";
		case XACT_EVENT_PARALLEL_PRE_COMMIT:
			return "XACT_EVENT_PARALLEL_PRE_COMMIT";
		case XACT_EVENT_PRE_PREPARE:
			return "XACT_EVENT_PRE_PREPARE";
	}
	return "(unknown XactEvent)";
}

/*
 * Runs for every transaction event of the session once registered (upstream logs the same
 * DEBUG2 line, which makes the number of registered callbacks observable). At the first commit
 * after a wake() upstream sets its worker's latch; the stand-in's worker polls, so the signal
 * itself is a no-op and only the bookkeeping remains.
 */
static void
wake_worker_at_commit(XactEvent event, void *arg)
{
	elog(DEBUG2, "pg_net xact callback received: %s", xact_event_text(event));
	switch (event)
	{
		case XACT_EVENT_COMMIT:
		case XACT_EVENT_PARALLEL_COMMIT:
		case XACT_EVENT_PREPARE:
		case XACT_EVENT_ABORT:
		case XACT_EVENT_PARALLEL_ABORT:
			wake_requested = false;
			break;
		default:
			break;
	}
}

PG_FUNCTION_INFO_V1(wake);
/* Registers a commit callback once per transaction and, like upstream, never unregisters it. */
Datum
wake(PG_FUNCTION_ARGS)
{
	if (!wake_requested)
	{
		RegisterXactCallback(wake_worker_at_commit, NULL);
		wake_requested = true;
	}
	PG_RETURN_VOID();
}
