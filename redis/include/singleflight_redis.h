/*
 * singleflight_redis.h - fleet-wide duplicate call suppression on Redis.
 *
 * libsingleflight-redis stacks a Redis tier behind a libsingleflight group:
 * the callers of one process (or of one host, with a shared group in front)
 * coalesce in the front group, and only the front group's leader talks to
 * Redis, where every host's leader competes for one fenced lease per key.
 * The lease winner runs fn; everyone else, on every host, is woken by one
 * pub/sub push and reads the same bytes.  See docs/redis.md for the protocol
 * and its failure modes.
 *
 * General rules (those of singleflight.h, plus):
 *  - Functions returning int return SF_OK (0) on success and a negative code
 *    on failure: one of the core's SF_E* codes or an SF_REDIS_E* code below.
 *    They never abort, never throw, never block without a bound.
 *  - Keys are arbitrary bytes (NULs included); the library copies them.
 *  - Every function is thread-safe except sf_redis_free, which must not run
 *    concurrently with any other use of the same handle.
 *
 * This header is C89 and C++ clean.
 */
#ifndef SINGLEFLIGHT_REDIS_H
#define SINGLEFLIGHT_REDIS_H

#include <singleflight.h>

#ifdef __cplusplus
extern "C" {
#endif

#define SF_REDIS_VERSION_MAJOR 0
#define SF_REDIS_VERSION_MINOR 1
#define SF_REDIS_VERSION_PATCH 0
#define SF_REDIS_VERSION_STRING "0.1.0"

/* Statuses of the Redis tier, beside the core's (which keep their meaning).
 * Their values are far from the core's so that the two sets never collide.
 * X(name, value, description) */
#define SF_REDIS_STATUS_MAP(X)                                                 \
    X(SF_REDIS_EUNAVAILABLE, -1001, "Redis could not be reached or did not "  \
                                    "answer in time (on_down = FAIL)")        \
    X(SF_REDIS_EAUTH,        -1002, "Redis refused the password or database") \
    X(SF_REDIS_EPROTO,       -1003, "the server did not answer as Redis, or "  \
                                    "returned an error for a command or "     \
                                    "script")                                 \
    X(SF_REDIS_ETOOBIG,      -1004, "the value is larger than "                \
                                    "max_value_bytes")

#define SF_REDIS_STATUS_ENUM_ITEM_(name, value, text) name = value,
typedef enum sf_redis_status {
    SF_REDIS_STATUS_MAP(SF_REDIS_STATUS_ENUM_ITEM_)
    SF_REDIS_STATUS_LAST_ = -1004
} sf_redis_status;
#undef SF_REDIS_STATUS_ENUM_ITEM_

/* A description of code: the Redis tier's statuses and, for every other
 * code, sf_strerror's text.  Never NULL; static.  Thread-safe. */
SF_API const char *sf_redis_strerror(int code);

/* The symbolic name of code ("SF_REDIS_EAUTH"), else sf_err_name(code).
 * Never NULL; static.  Thread-safe. */
SF_API const char *sf_redis_err_name(int code);

/* ------------------------------------------------------------------------ */
/* Options                                                                   */
/* ------------------------------------------------------------------------ */

/* What a call does when Redis is down, slow or refusing us. */
typedef enum sf_redis_on_down {
    /* Run fn coalesced only by the front group (host-local coalescing), and
     * count it in sf_redis_stats.fallbacks.  The default. */
    SF_REDIS_FALLBACK = 0,
    /* Return SF_REDIS_EUNAVAILABLE (or SF_REDIS_EAUTH / SF_REDIS_EPROTO). */
    SF_REDIS_FAIL = 1
} sf_redis_on_down;

/* The struct grows only at its end; see SF_GROUP_OPTIONS_VERSION. */
#define SF_REDIS_OPTIONS_VERSION 1

typedef struct sf_redis_options {
    unsigned int version;     /* SF_REDIS_OPTIONS_VERSION */
    const char  *host;        /* default "127.0.0.1"; copied */
    int          port;        /* default 6379 */
    const char  *unix_path;   /* a Unix socket instead of host/port; NULL:
                                 TCP; copied */
    const char  *username;    /* ACL user for AUTH; NULL: none; copied */
    const char  *password;    /* AUTH password; NULL: none; copied */
    int          db;          /* SELECT db; default 0 */
    const char  *key_prefix;  /* prepended to every key: the Redis keys of a
                                 key K are "{<prefix>:K}:lease", ":val",
                                 ":tok", ":fresh" (one Cluster hash tag);
                                 default "sf"; copied */
    unsigned int lease_ms;    /* lease duration: a dead leader is replaced at
                                 most this long after its last renewal;
                                 default 3000 */
    unsigned int renew_ms;    /* the watchdog renews every live lease this
                                 often; must be below lease_ms; 0 (the
                                 default): lease_ms / 3 */
    unsigned int wait_ms;     /* bound on one call's wait for another
                                 leader (this host's or another's), fn's own
                                 run time not included; default 10000 */
    unsigned int soft_ttl_ms; /* a value is fresh this long; default 60000 */
    unsigned int hard_ttl_ms; /* and kept (served stale while one caller
                                 refreshes it) this long; >= soft_ttl_ms;
                                 0 (the default): soft_ttl_ms (no stale
                                 serving) */
    unsigned int error_ttl_ms; /* fn's errors (non-zero return, panics) are
                                  shared with that flight's waiters and kept
                                  this long; 0: not kept beyond the flight
                                  (waiters still get them); default 1000 */
    int          cache;       /* 1 (default): read-through cache with the
                                 TTLs above; 0: pure coalescing, a result
                                 reaches only the callers waiting for it */
    size_t       max_value_bytes; /* larger values are refused with
                                     SF_REDIS_ETOOBIG; default 1 MiB, at
                                     most 512 MiB */
    unsigned int connect_timeout_ms; /* default 500 */
    unsigned int command_timeout_ms; /* every Redis round trip; default 500 */
    int          on_down;     /* sf_redis_on_down; default SF_REDIS_FALLBACK */
    sf_group    *front;       /* the group in front (local or shared): its
                                 leader is the only caller of the process
                                 (host) that talks to Redis for a key.  Not
                                 owned; must outlive the handle.  NULL: a
                                 private local group owned by the handle */
} sf_redis_options;

/* Fills *opts with the defaults of the given version (pass
 * SF_REDIS_OPTIONS_VERSION).  SF_OK; SF_EINVAL for NULL or an unknown
 * version.  Thread-safe; no ownership involved. */
SF_API int sf_redis_options_init(sf_redis_options *opts,
                                 unsigned int version);

/* ------------------------------------------------------------------------ */
/* Handle                                                                    */
/* ------------------------------------------------------------------------ */

/* One process's view of one Redis tier: a pool of command connections, one
 * subscriber connection (one per handle, not one per waiter) and one
 * watchdog thread that renews the leases this process holds.  Owned by
 * whoever called sf_redis_new. */
typedef struct sf_redis sf_redis;

/* Creates a handle and tries one connection: a server that refuses the
 * password or database gives SF_REDIS_EAUTH, one that does not speak Redis
 * SF_REDIS_EPROTO (no handle is made).  A server that cannot be reached is
 * no error: the handle reconnects on its own, and calls follow on_down until
 * then.  SF_EINVAL for bad options (renew_ms >= lease_ms, hard < soft TTL,
 * ...), SF_ENOMEM.  On success *out owns the handle (sf_redis_free).
 * Strings in opts are copied; opts->front is borrowed.  Thread-safe. */
SF_API int sf_redis_new(sf_redis **out, const sf_redis_options *opts);

/* Stops the threads, closes the connections and frees the handle.  Leases
 * still held are left to lapse.  Must not run concurrently with any other
 * use of r, and no sf_redis_do may be in progress.  NULL is a no-op; returns
 * SF_OK. */
SF_API int sf_redis_free(sf_redis *r);

/* Returns the value of key, fleet-wide coalesced:
 *  - a fresh value in Redis is returned without running fn;
 *  - a value past soft_ttl_ms (within hard_ttl_ms) is returned at once,
 *    while exactly one caller in the fleet refreshes it: that caller (the
 *    one whose sf_redis_do won the refresh lease) runs fn itself before it
 *    returns, and returns the new value; the other callers of its process
 *    got the old value at once.  (fn and payload belong to the caller, so
 *    the library never runs fn after sf_redis_do returns.)
 *  - otherwise exactly one caller fleet-wide runs fn(call, payload), on its
 *    own thread; fn stores bytes with sf_call_set_bytes(call, ...) and
 *    returns 0 or a user error code, as for sf_group_do.  Every caller,
 *    anywhere, gets the same bytes and error.
 *
 * Returns SF_OK (fn's bytes in sf_result_bytes, its error in
 * sf_result_error), SF_EPANIC (fn panicked: sf_call_panic or a C++
 * exception), SF_EGOEXIT (a leader of this host's front group exited),
 * SF_ETIMEDOUT (waited wait_ms for another leader, in vain), SF_EDEADLK
 * (fn called sf_redis_do on r for its own key: the call would wait for
 * itself; other keys are ordinary calls), SF_EINVAL,
 * SF_ENOMEM, SF_REDIS_ETOOBIG (fn's value is over max_value_bytes: the whole
 * flight gets it, nothing is stored), and with on_down = FAIL also
 * SF_REDIS_EUNAVAILABLE / SF_REDIS_EAUTH / SF_REDIS_EPROTO.  With the
 * default on_down = FALLBACK those become a run of fn coalesced by the front
 * group only.
 *
 * On SF_OK and SF_EPANIC, *result (if result is not NULL) owns a new
 * reference (sf_result_release); on other statuses it is set to NULL.  The
 * call blocks at most about wait_ms + fn's run time + a few command
 * timeouts.  fn must not call sf_call_finish on its call.  payload is not
 * owned and not used after the call returns.  Thread-safe. */
SF_API int sf_redis_do(sf_redis *r, const void *key, size_t key_len,
                       sf_fn fn, void *payload, sf_result **result);

/* Deletes key's value from Redis (not a flight in progress): the next call
 * runs fn.  SF_OK (also when there was none), SF_REDIS_EUNAVAILABLE,
 * SF_REDIS_EPROTO, SF_EINVAL.  Thread-safe. */
SF_API int sf_redis_forget(sf_redis *r, const void *key, size_t key_len);

/* ------------------------------------------------------------------------ */
/* Stats                                                                     */
/* ------------------------------------------------------------------------ */

#define SF_REDIS_STATS_VERSION 1

typedef struct sf_redis_stats {
    unsigned int version;   /* set to SF_REDIS_STATS_VERSION by the caller */
    sf_u64 calls;           /* sf_redis_do calls */
    sf_u64 executions;      /* runs of fn in this process (all kinds) */
    sf_u64 hits;            /* front leaders served a fresh value from Redis */
    sf_u64 stale_hits;      /* front leaders served a stale value at once */
    sf_u64 lease_wins;      /* leases taken (INCR + SET NX), takeovers and
                               refreshes included */
    sf_u64 waits;           /* front leaders that waited for another host */
    sf_u64 wakeups;         /* waits ended by a pub/sub push */
    sf_u64 takeovers;       /* leases taken after waiting for a leader that
                               lapsed without a result */
    sf_u64 fallbacks;       /* runs of fn without Redis (on_down FALLBACK) */
    sf_u64 unavailable;     /* calls that found Redis down, slow or
                               refusing (either policy) */
    sf_u64 fenced;          /* result writes refused: the lease had lapsed
                               and another leader holds or finished it */
    sf_u64 renewals;        /* lease renewals by the watchdog */
    sf_u64 timeouts;        /* calls that returned SF_ETIMEDOUT */
    sf_u64 reconnects;      /* connections (re)opened after a failure */
} sf_redis_stats;

/* Reads the counters (each exact when nothing runs concurrently).  SF_OK;
 * SF_EINVAL for NULL or an unknown version.  Thread-safe. */
SF_API int sf_redis_stats_get(const sf_redis *r, sf_redis_stats *out);

#ifdef __cplusplus
}
#endif

#endif /* SINGLEFLIGHT_REDIS_H */
