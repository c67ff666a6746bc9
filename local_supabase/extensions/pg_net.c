/*
 * LOCAL_SUPABASE STAND-IN for pg_net's SQL-callable C helpers -- written for local tests, not upstream code.
 *
 * Why C: pg_net's URL helpers and net.wake() are C functions; `net.http_post` calls them for
 * every request. Written in SQL they cost more than the rest of http_post, which would inflate
 * what every webhook variant pays per request. Like pg_net, the URL helpers use libcurl
 * (curl_easy_escape and the URL API), so URLs are parsed, normalised and rejected as curl does.
 * There is no background worker here: local_supabase.pg_net_worker (a Python thread) sends the
 * queue, and this library wakes it at commit the way upstream wakes its worker (see below).
 *
 * net.wake() keeps upstream's (0.20.4, still so at its HEAD) cost model on purpose: every
 * transaction that queues a request registers one more transaction callback with
 * RegisterXactCallback, and nothing ever unregisters them. PostgreSQL calls every registered
 * callback at every transaction event of the session, so a connection that has fired N webhooks
 * pays N callback calls per event on each later transaction, webhook or not. Tests of
 * long-lived (pooled) sessions must see that slowdown, so the leak is real here too.
 */
#include "postgres.h"

#include <arpa/inet.h>
#include <curl/curl.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include "access/xact.h"
#include "fmgr.h"
#include "port/atomics.h"
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

/*
 * The wake signal. Upstream keeps a flag (should_wake) and its worker's latch in shared memory:
 * at the commit of a transaction that called net.wake(), the backend swaps the flag from 0 to 1
 * and, only if that swap succeeded, sets the latch; the worker swaps it back to 0 when it starts
 * a busy period. This library is not preloaded, so it has no shared memory of its own; the flag
 * lives in a small file in the data directory (every backend's working directory) that each
 * backend maps once, and "setting the latch" is a one-byte UDP datagram to each worker thread
 * that registered its loopback port in the same file (local_supabase.pg_net_worker does that,
 * and resets the flag, through its own mapping of the file). The commit path is upstream's: one
 * compare-and-swap, and a send only when it flips the flag. Nothing here may raise an error at
 * commit, so every failure (file or socket) just skips the wake.
 *
 * Layout, shared with pg_net_worker.py: uint32 should_wake at offset 0, then WAKE_SLOTS pairs
 * of uint32 (pid, port) of registered workers; the file is WAKE_FILE_SIZE bytes.
 */
#define WAKE_FILE_NAME "pg_net_stand_in.wake"
#define WAKE_FILE_SIZE 4096
#define WAKE_SLOTS 16

typedef struct
{
	pg_atomic_uint32 pid;
	pg_atomic_uint32 port;
} WakeListener;

typedef struct
{
	pg_atomic_uint32 should_wake;
	WakeListener listeners[WAKE_SLOTS];
} WakeFile;

StaticAssertDecl(sizeof(pg_atomic_uint32) == 4, "pg_net_worker.py reads 4-byte words");
StaticAssertDecl(sizeof(WakeFile) == 4 + 8 * WAKE_SLOTS, "pg_net_worker.py relies on this layout");

static WakeFile *wake_file = NULL;
static int	wake_socket = -1;

static WakeFile *
map_wake_file(void)
{
	int			fd;
	struct stat st;
	void	   *mapped;

	if (wake_file != NULL)
		return wake_file;
	fd = open(WAKE_FILE_NAME, O_RDWR | O_CREAT | O_CLOEXEC, S_IRUSR | S_IWUSR);
	if (fd < 0)
		return NULL;
	if (fstat(fd, &st) != 0 || (st.st_size < WAKE_FILE_SIZE && ftruncate(fd, WAKE_FILE_SIZE) != 0))
	{
		close(fd);
		return NULL;
	}
	mapped = mmap(NULL, WAKE_FILE_SIZE, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
	close(fd);
	if (mapped == MAP_FAILED)
		return NULL;
	wake_file = (WakeFile *) mapped;
	return wake_file;
}

/* "SetLatch": a datagram to every registered worker; lost ones are harmless (see the worker). */
static void
signal_listeners(WakeFile *file)
{
	struct sockaddr_in address;

	if (wake_socket < 0)
		wake_socket = socket(AF_INET, SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	if (wake_socket < 0)
		return;
	memset(&address, 0, sizeof(address));
	address.sin_family = AF_INET;
	address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	for (int slot = 0; slot < WAKE_SLOTS; slot++)
	{
		uint32		port = pg_atomic_read_u32(&file->listeners[slot].port);

		if (port == 0 || port > 65535)
			continue;
		address.sin_port = htons((uint16) port);
		(void) sendto(wake_socket, "w", 1, MSG_DONTWAIT, (struct sockaddr *) &address, sizeof(address));
	}
}

/* Upstream's commit path: wake the worker only if this commit is the first since it reset the flag. */
static void
wake_worker(void)
{
	WakeFile   *file = map_wake_file();
	uint32		expected = 0;

	if (file == NULL)
	{
		elog(DEBUG1, "pg_net stand-in: cannot map %s, worker not woken", WAKE_FILE_NAME);
		return;
	}
	if (pg_atomic_compare_exchange_u32(&file->should_wake, &expected, 1))
		signal_listeners(file);
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
 * DEBUG2 line, which makes the number of registered callbacks observable). As upstream: at the
 * first commit after a wake() it wakes the worker (the first of the session's callbacks to see
 * the commit does it and clears the request, so the others only test a flag); PREPARE and
 * rollback drop the request. A subtransaction's rollback does not: the commit still wakes.
 */
static void
wake_worker_at_commit(XactEvent event, void *arg)
{
	elog(DEBUG2, "pg_net xact callback received: %s", xact_event_text(event));
	switch (event)
	{
		case XACT_EVENT_COMMIT:
		case XACT_EVENT_PARALLEL_COMMIT:
			if (wake_requested)
			{
				wake_worker();
				wake_requested = false;
			}
			break;
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
