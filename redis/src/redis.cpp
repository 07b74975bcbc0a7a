// libsingleflight-redis: the fleet-wide tier (docs/redis.md).
//
// Layering: a caller first coalesces in the front group (local or shared);
// only that group's leader talks to Redis.  There it runs one script that
// either returns a value, says "wait" (another host holds the lease), or
// takes a fresh fenced lease (INCR token + SET NX PX).  The lease winner runs
// fn through a private local group (which gives fn its sf_call and turns
// panics into results), writes the outcome with a token-checking script that
// also PUBLISHes, and finishes the front flight with the same bytes.
//
// Nothing here throws across the C boundary: every entry point catches.

#include "singleflight_redis.h"

#include <hiredis/hiredis.h>
#include <poll.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <cstring>
#include <list>
#include <memory>
#include <mutex>
#include <new>
#include <string>
#include <thread>
#include <vector>

namespace {

using Clock = std::chrono::steady_clock;

std::int64_t now_ms() {
    return std::chrono::duration_cast<std::chrono::milliseconds>(Clock::now().time_since_epoch())
        .count();
}

// Internal outcome of talking to Redis, before the policy decides.
enum class Net { ok, down, auth, proto };

int net_status(Net n) {
    switch (n) {
        case Net::auth:
            return SF_REDIS_EAUTH;
        case Net::proto:
            return SF_REDIS_EPROTO;
        default:
            return SF_REDIS_EUNAVAILABLE;
    }
}

struct ReplyDel {
    void operator()(redisReply *r) const {
        if (r) freeReplyObject(r);
    }
};
using Reply = std::unique_ptr<redisReply, ReplyDel>;

// The scripts.  Keys of one flight: KEYS[1] lease, [2] val (a hash: d = the
// outcome blob, t = the token of the lease that wrote it), [3] tok (the
// per-key counter), [4] fresh (exists while the value is fresh).
//
// ACQUIRE, ARGV: lease_ms, mode, tok_ttl_ms, min_token.
//  mode 0: a new caller, cache on;  1: a new caller, cache off;
//  2: a waiter, who accepts any outcome written by a lease >= min_token.
// Replies: {1, blob} a result; {2, blob} stale, someone refreshes;
//          {3, pttl, lease_token} wait; {4, token, blob} refresh it;
//          {5, token} lead.
const char kAcquire[] = R"lua(
local h = redis.call('HMGET', KEYS[2], 'd', 't')
local v, vt = h[1], tonumber(h[2])
local mode = ARGV[2]
if v then
  if mode == '2' then
    if vt and vt >= tonumber(ARGV[4]) then return {1, v} end
    v = false
  elseif mode == '1' then
    v = false
  elseif redis.call('EXISTS', KEYS[4]) == 1 then
    return {1, v}
  elseif string.sub(v, 1, 1) ~= 'v' then
    v = false
  end
end
local l = redis.call('PTTL', KEYS[1])
if l > 0 or l == -1 then
  if v then return {2, v} end
  return {3, l, tonumber(redis.call('GET', KEYS[1])) or 0}
end
local t = redis.call('INCR', KEYS[3])
redis.call('PEXPIRE', KEYS[3], ARGV[3])
redis.call('SET', KEYS[1], t, 'PX', ARGV[1], 'NX')
if v then return {4, t, v} end
return {5, t}
)lua";

// WRITE, ARGV: token, blob, val_px, fresh_px (0: none), channel, message.
// The fence: only the holder of the current lease may write.
const char kWrite[] = R"lua(
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
redis.call('DEL', KEYS[2])
redis.call('HSET', KEYS[2], 'd', ARGV[2], 't', ARGV[1])
redis.call('PEXPIRE', KEYS[2], ARGV[3])
if ARGV[4] ~= '0' then
  redis.call('SET', KEYS[3], '1', 'PX', ARGV[4])
else
  redis.call('DEL', KEYS[3])
end
redis.call('DEL', KEYS[1])
redis.call('PUBLISH', ARGV[5], ARGV[6])
return 1
)lua";

// RENEW, ARGV: token, lease_ms.  Compare-token, then extend.
const char kRenew[] = R"lua(
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
)lua";

// RELEASE, ARGV: token.  Gives a lease up without writing (a failed
// refresh keeps the stale value).
const char kRelease[] = R"lua(
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
)lua";

// The marker a front leader panics its front flight with to hand a library
// status (not fn's outcome) to the front followers, who may be in another
// process of a shared group and so can only receive bytes, codes and a
// panic message.  \x01 keeps it apart from any message a user would write.
const char kStatusMark[] = "\x01sf_redis status ";

// The outcome of one flight as stored in Redis: kind byte, 4-byte big-endian
// code, then bytes.  'v' value (code 0), 'u' fn's error code with its bytes,
// 'p' panic (bytes: message), 's' a library status (code).
struct Outcome {
    char kind = 'v';
    int code = 0;
    std::string bytes;
};

std::string encode(const Outcome &o) {
    std::string b;
    b.reserve(5 + o.bytes.size());
    b.push_back(o.kind);
    auto c = static_cast<std::uint32_t>(o.code);
    for (int s = 24; s >= 0; s -= 8) b.push_back(static_cast<char>((c >> s) & 0xff));
    b += o.bytes;
    return b;
}

bool decode(const char *p, size_t n, Outcome &o) {
    if (n < 5) return false;
    o.kind = p[0];
    if (o.kind != 'v' && o.kind != 'u' && o.kind != 'p' && o.kind != 's') return false;
    std::uint32_t c = 0;
    for (int i = 1; i < 5; i++) c = (c << 8) | static_cast<unsigned char>(p[i]);
    o.code = static_cast<int>(c);
    o.bytes.assign(p + 5, n - 5);
    return true;
}

struct Waiter {
    std::string base;
    bool woken = false;
    std::condition_variable cv;
};

struct Lease {
    std::string base;
    std::string token;
};

struct Counters {
    std::atomic<sf_u64> calls{0}, executions{0}, hits{0}, stale_hits{0}, lease_wins{0}, waits{0},
        wakeups{0}, takeovers{0}, fallbacks{0}, unavailable{0}, fenced{0}, renewals{0}, timeouts{0},
        reconnects{0};
};

void bump(std::atomic<sf_u64> &c) { c.fetch_add(1, std::memory_order_relaxed); }

}  // namespace

struct sf_redis {
    std::string host, unix_path, username, password, prefix, channel;
    int port = 6379, db = 0;
    unsigned lease_ms = 0, renew_ms = 0, wait_ms = 0, soft_ms = 0, hard_ms = 0, error_ms = 0,
             connect_ms = 0, command_ms = 0;
    bool cache = true, fail_on_down = false;
    size_t max_value = 0;
    sf_group *front = nullptr;
    bool own_front = false;
    sf_group *inner = nullptr;  // gives fn its sf_call
    sf_group *mint = nullptr;   // makes a refresher's own sf_result

    std::mutex pool_mu;
    std::vector<redisContext *> idle;
    std::atomic<std::int64_t> down_until{0};
    std::atomic<bool> ever_failed{false};

    std::mutex w_mu;
    std::list<Waiter *> waiters;
    std::atomic<bool> sub_up{false};

    std::mutex l_mu;
    std::list<Lease> leases;

    std::mutex stop_mu;
    std::condition_variable stop_cv;
    bool stopping = false;
    int stop_pipe[2] = {-1, -1};
    std::thread watchdog, subscriber;

    Counters st;
};

namespace {

// ---- connections -------------------------------------------------------

timeval tv_ms(unsigned ms) {
    timeval tv;
    tv.tv_sec = static_cast<time_t>(ms / 1000);
    tv.tv_usec = static_cast<suseconds_t>((ms % 1000) * 1000);
    return tv;
}

Net classify(redisContext *c) {
    if (c->err == REDIS_ERR_PROTOCOL) return Net::proto;
    return Net::down;
}

bool is_auth_error(const redisReply *r) {
    return r->type == REDIS_REPLY_ERROR &&
           (std::strncmp(r->str, "WRONGPASS", 9) == 0 || std::strncmp(r->str, "NOAUTH", 6) == 0 ||
            std::strstr(r->str, "password") != nullptr ||
            std::strstr(r->str, "DB index") != nullptr || std::strstr(r->str, "AUTH") != nullptr);
}

Reply command(redisContext *c, const std::vector<std::string> &args) {
    std::vector<const char *> argv;
    std::vector<size_t> lens;
    argv.reserve(args.size());
    lens.reserve(args.size());
    for (auto &a : args) {
        argv.push_back(a.data());
        lens.push_back(a.size());
    }
    return Reply(static_cast<redisReply *>(
        redisCommandArgv(c, static_cast<int>(argv.size()), argv.data(), lens.data())));
}

// Opens and checks one connection: PING proves the peer speaks Redis before
// anything else is trusted (a stray HTTP server fails here as EPROTO).
Net open_conn(sf_redis *r, unsigned timeout_ms, redisContext **out) {
    timeval ctv = tv_ms(r->connect_ms);
    redisContext *c = r->unix_path.empty() ? redisConnectWithTimeout(r->host.c_str(), r->port, ctv)
                                           : redisConnectUnixWithTimeout(r->unix_path.c_str(), ctv);
    if (!c) return Net::down;
    if (c->err) {
        redisFree(c);
        return Net::down;
    }
    if (timeout_ms) redisSetTimeout(c, tv_ms(timeout_ms));
    if (r->unix_path.empty()) redisEnableKeepAlive(c);
    auto fail = [&](Net n) {
        redisFree(c);
        return n;
    };
    if (!r->password.empty()) {
        std::vector<std::string> a{"AUTH"};
        if (!r->username.empty()) a.push_back(r->username);
        a.push_back(r->password);
        Reply rep = command(c, a);
        if (!rep) return fail(classify(c));
        if (rep->type == REDIS_REPLY_ERROR)
            return fail(is_auth_error(rep.get()) ? Net::auth : Net::proto);
    }
    {
        Reply rep = command(c, {"PING"});
        if (!rep) return fail(classify(c));
        if (rep->type == REDIS_REPLY_ERROR)
            return fail(is_auth_error(rep.get()) ? Net::auth : Net::proto);
        if (rep->type != REDIS_REPLY_STATUS || std::strcmp(rep->str, "PONG") != 0)
            return fail(Net::proto);
    }
    if (r->db != 0) {
        Reply rep = command(c, {"SELECT", std::to_string(r->db)});
        if (!rep) return fail(classify(c));
        if (rep->type == REDIS_REPLY_ERROR) return fail(Net::auth);
    }
    *out = c;
    return Net::ok;
}

// After a failure, calls skip Redis for a short while instead of each paying
// a connect timeout; the first call after it tries again (reconnect).
constexpr std::int64_t kRetryMs = 100;

Net acquire_conn(sf_redis *r, redisContext **out) {
    {
        std::lock_guard<std::mutex> lk(r->pool_mu);
        if (!r->idle.empty()) {
            *out = r->idle.back();
            r->idle.pop_back();
            return Net::ok;
        }
    }
    if (now_ms() < r->down_until.load()) return Net::down;
    Net n = open_conn(r, r->command_ms, out);
    if (n != Net::ok) {
        r->down_until.store(now_ms() + kRetryMs);
        r->ever_failed.store(true);
    } else if (r->ever_failed.exchange(false)) {
        bump(r->st.reconnects);
    }
    return n;
}

void release_conn(sf_redis *r, redisContext *c) {
    if (c->err) {
        // A broken or timed-out connection cannot be trusted to be in step
        // with its replies: drop it, and let the next call reconnect.
        redisFree(c);
        r->down_until.store(now_ms() + kRetryMs);
        r->ever_failed.store(true);
        return;
    }
    std::lock_guard<std::mutex> lk(r->pool_mu);
    if (r->idle.size() < 16) {
        r->idle.push_back(c);
        return;
    }
    redisFree(c);
}

// One round trip on a pooled connection.
Net roundtrip(sf_redis *r, const std::vector<std::string> &args, Reply &out) {
    redisContext *c = nullptr;
    Net n = acquire_conn(r, &c);
    if (n != Net::ok) return n;
    out = command(c, args);
    if (!out) n = classify(c);
    else if (out->type == REDIS_REPLY_ERROR) n = is_auth_error(out.get()) ? Net::auth : Net::proto;
    release_conn(r, c);
    return n;
}

Net eval(sf_redis *r, const char *script, const std::string &base, int nkeys,
         const std::vector<std::string> &argv, Reply &out) {
    static const char *const kSuffix[] = {":lease", ":val", ":tok", ":fresh"};
    std::vector<std::string> a{"EVAL", script, std::to_string(nkeys)};
    for (int i = 0; i < nkeys; i++) a.push_back(base + kSuffix[i]);
    a.insert(a.end(), argv.begin(), argv.end());
    return roundtrip(r, a, out);
}

// WRITE's key order differs (no tok): lease, val, fresh.
Net eval_write(sf_redis *r, const std::string &base, const std::vector<std::string> &argv,
               Reply &out) {
    std::vector<std::string> a{"EVAL",          kWrite,        "3",
                               base + ":lease", base + ":val", base + ":fresh"};
    a.insert(a.end(), argv.begin(), argv.end());
    return roundtrip(r, a, out);
}

// ---- waiters and the subscriber -----------------------------------------

void wake(sf_redis *r, const char *base, size_t len, bool all) {
    std::lock_guard<std::mutex> lk(r->w_mu);
    for (Waiter *w : r->waiters) {
        if (all || (w->base.size() == len && std::memcmp(w->base.data(), base, len) == 0)) {
            w->woken = true;
            w->cv.notify_all();
        }
    }
}

bool stop_requested(sf_redis *r) {
    std::lock_guard<std::mutex> lk(r->stop_mu);
    return r->stopping;
}

void pause_or_stop(sf_redis *r, unsigned ms) {
    std::unique_lock<std::mutex> lk(r->stop_mu);
    r->stop_cv.wait_for(lk, std::chrono::milliseconds(ms), [&] { return r->stopping; });
}

// One connection per handle carries every wake-up: all completions of this
// prefix and database are published on one channel with the flight's key as
// the message, so there is nothing to subscribe per wait (and no
// subscribe/publish race: a waiter re-reads after registering, and the
// subscription is older than the registration).
void subscriber_main(sf_redis *r) {
    while (!stop_requested(r)) {
        redisContext *c = nullptr;
        if (open_conn(r, r->command_ms, &c) != Net::ok) {
            pause_or_stop(r, 100);
            continue;
        }
        Reply rep = command(c, {"SUBSCRIBE", r->channel});
        if (!rep || rep->type != REDIS_REPLY_ARRAY) {
            redisFree(c);
            pause_or_stop(r, 100);
            continue;
        }
        r->sub_up.store(true);
        wake(r, nullptr, 0, true);  // whatever was published while down
        while (true) {
            pollfd p[2] = {{c->fd, POLLIN, 0}, {r->stop_pipe[0], POLLIN, 0}};
            int n = poll(p, 2, 1000);
            if (n < 0) continue;
            if (p[1].revents) break;
            if (n == 0) continue;
            if (redisBufferRead(c) != REDIS_OK) break;
            void *raw = nullptr;
            bool bad = false;
            while (true) {
                if (redisGetReplyFromReader(c, &raw) != REDIS_OK) {
                    bad = true;
                    break;
                }
                if (!raw) break;
                Reply m(static_cast<redisReply *>(raw));
                if (m->type == REDIS_REPLY_ARRAY && m->elements == 3 &&
                    m->element[2]->type == REDIS_REPLY_STRING)
                    wake(r, m->element[2]->str, m->element[2]->len, false);
            }
            if (bad) break;
        }
        r->sub_up.store(false);
        redisFree(c);
        wake(r, nullptr, 0, true);  // waiters fall back to polling
    }
}

// One thread renews every lease this process holds, every renew_ms, with a
// compare-token script: a lease another leader now holds is left alone.
void watchdog_main(sf_redis *r) {
    while (true) {
        pause_or_stop(r, r->renew_ms);
        if (stop_requested(r)) return;
        std::vector<Lease> snap;
        {
            std::lock_guard<std::mutex> lk(r->l_mu);
            snap.assign(r->leases.begin(), r->leases.end());
        }
        for (auto &l : snap) {
            Reply rep;
            std::vector<std::string> a{
                "EVAL", kRenew, "1", l.base + ":lease", l.token, std::to_string(r->lease_ms)};
            if (roundtrip(r, a, rep) == Net::ok && rep->type == REDIS_REPLY_INTEGER &&
                rep->integer == 1)
                bump(r->st.renewals);
        }
    }
}

// ---- one call -----------------------------------------------------------

std::string redis_base(const sf_redis *r, const void *key, size_t len) {
    std::string b;
    b.reserve(r->prefix.size() + len + 4);
    b += '{';
    b += r->prefix;
    b += ':';
    b.append(static_cast<const char *>(key), len);
    b += '}';
    return b;
}

// Runs fn in the private group; fills o.  Returns the inner status.
void run_fn(sf_redis *r, const void *key, size_t len, sf_fn fn, void *payload, Outcome &o) {
    sf_result *res = nullptr;
    bump(r->st.executions);
    int s = sf_group_do(r->inner, key, len, fn, payload, &res, nullptr);
    if (s == SF_OK) {
        size_t n = 0;
        const void *b = sf_result_bytes(res, &n);
        int err = sf_result_error(res);
        if (n > r->max_value) {
            o.kind = 's';
            o.code = SF_REDIS_ETOOBIG;
            o.bytes.clear();
        } else {
            o.kind = err ? 'u' : 'v';
            o.code = err;
            o.bytes.assign(b ? static_cast<const char *>(b) : "", b ? n : 0);
        }
    } else if (s == SF_EPANIC) {
        const char *m = sf_result_panic_message(res);
        o.kind = 'p';
        o.code = SF_EPANIC;
        o.bytes = m ? m : "panic";
    } else {
        o.kind = 's';
        o.code = s;
        o.bytes.clear();
    }
    sf_result_release(res);
}

// Hands an outcome to the front flight (so every caller of the front group
// reads it) with the core's own means.
void finish_front(sf_call *fc, const Outcome &o) {
    switch (o.kind) {
        case 'v':
        case 'u':
            if (sf_call_set_bytes(fc, o.bytes.data(), o.bytes.size()) != SF_OK) {
                sf_call_panic(fc, "sf_redis: the front group refused the value");
                return;
            }
            sf_call_finish(fc, o.code);
            return;
        case 'p':
            sf_call_panic(fc, o.bytes.c_str());
            return;
        default: {
            std::string m = kStatusMark + std::to_string(o.code);
            sf_call_panic(fc, m.c_str());
        }
    }
}

// What a front caller returns, from the front flight's result.
int front_result(sf_call *fc, sf_i64 timeout_ns, sf_result **result) {
    sf_result *res = nullptr;
    int s = sf_call_wait(fc, timeout_ns, &res, nullptr);
    if (s == SF_EPANIC) {
        const char *m = sf_result_panic_message(res);
        size_t ml = sizeof kStatusMark - 1;
        if (m && std::strncmp(m, kStatusMark, ml) == 0) {
            sf_result_release(res);
            return std::atoi(m + ml);
        }
    }
    if (s != SF_OK && s != SF_EPANIC) {
        sf_result_release(res);
        res = nullptr;
    }
    if (result) *result = res;
    else sf_result_release(res);
    return s;
}

Outcome status_outcome(int code) {
    Outcome o;
    o.kind = 's';
    o.code = code;
    return o;
}

bool is_error(const Outcome &o) { return o.kind != 'v'; }

// The lease winner: run fn with the watchdog renewing, then the fenced write.
void lead_and_write(sf_redis *r, const std::string &base, const void *key, size_t len,
                    long long token, sf_fn fn, void *payload, Outcome &o, bool refresh = false) {
    std::string tok = std::to_string(token);
    std::list<Lease>::iterator it;
    {
        std::lock_guard<std::mutex> lk(r->l_mu);
        it = r->leases.insert(r->leases.end(), Lease{base, tok});
    }
    run_fn(r, key, len, fn, payload, o);
    {
        std::lock_guard<std::mutex> lk(r->l_mu);
        r->leases.erase(it);
    }
    Reply rep;
    if (refresh && is_error(o)) {
        // A failed refresh does not replace a good stale value: the lease
        // goes, and the next caller past the soft TTL tries again.
        std::vector<std::string> a{"EVAL", kRelease, "1", base + ":lease", tok};
        if (roundtrip(r, a, rep) != Net::ok) bump(r->st.unavailable);
        return;
    }
    unsigned val_px, fresh_px;
    if (!r->cache) {
        // Kept only for the waiters of this flight to read.
        val_px = r->wait_ms + r->lease_ms;
        fresh_px = 0;
    } else if (is_error(o)) {
        val_px = std::max(r->error_ms, r->wait_ms + r->lease_ms);
        fresh_px = r->error_ms;
    } else {
        val_px = r->hard_ms;
        fresh_px = r->soft_ms;
    }
    Net n = eval_write(
        r, base,
        {tok, encode(o), std::to_string(val_px), std::to_string(fresh_px), r->channel, base}, rep);
    if (n != Net::ok) bump(r->st.unavailable);
    else if (rep->type == REDIS_REPLY_INTEGER && rep->integer == 0) bump(r->st.fenced);
}

struct Acq {
    long long kind = 0;
    long long a = 0, b = 0;
    Outcome o;
};

Net acquire(sf_redis *r, const std::string &base, int mode, long long min_token, Acq &q) {
    Reply rep;
    Net n = eval(r, kAcquire, base, 4,
                 {std::to_string(r->lease_ms), std::to_string(mode),
                  std::to_string(std::max<std::uint64_t>(86400000u, 2ull * r->hard_ms)),
                  std::to_string(min_token)},
                 rep);
    if (n != Net::ok) return n;
    if (rep->type != REDIS_REPLY_ARRAY || rep->elements < 2 ||
        rep->element[0]->type != REDIS_REPLY_INTEGER)
        return Net::proto;
    q.kind = rep->element[0]->integer;
    auto str_at = [&](size_t i) -> bool {
        return i < rep->elements && rep->element[i]->type == REDIS_REPLY_STRING &&
               decode(rep->element[i]->str, rep->element[i]->len, q.o);
    };
    auto int_at = [&](size_t i, long long &v) -> bool {
        if (i >= rep->elements || rep->element[i]->type != REDIS_REPLY_INTEGER) return false;
        v = rep->element[i]->integer;
        return true;
    };
    bool ok = false;
    switch (q.kind) {
        case 1:
        case 2:
            ok = str_at(1);
            break;
        case 3:
            ok = int_at(1, q.a) && int_at(2, q.b);
            break;
        case 4:
            ok = int_at(1, q.a) && str_at(2);
            break;
        case 5:
            ok = int_at(1, q.a);
            break;
        default:
            break;
    }
    return ok ? Net::ok : Net::proto;
}

// Redis failed us: the policy decides.
void on_down(sf_redis *r, Net n, const void *key, size_t len, sf_fn fn, void *payload, Outcome &o) {
    bump(r->st.unavailable);
    if (r->fail_on_down) {
        o = status_outcome(net_status(n));
        return;
    }
    bump(r->st.fallbacks);
    run_fn(r, key, len, fn, payload, o);
}

// The front leader's whole protocol.  Fills o with what the front flight
// gets, or, when it sets front_done (a refresher, whose front flight got the
// stale value at once), with what this caller alone returns.
void front_lead(sf_redis *r, sf_call *fc, const void *key, size_t len, sf_fn fn, void *payload,
                Outcome &o, bool &front_done) {
    std::string base = redis_base(r, key, len);
    Acq q;
    Net n = acquire(r, base, r->cache ? 0 : 1, 0, q);
    if (n != Net::ok) return on_down(r, n, key, len, fn, payload, o);
    switch (q.kind) {
        case 1:
            bump(r->st.hits);
            o = q.o;
            return;
        case 2:
            bump(r->st.stale_hits);
            o = q.o;
            return;
        case 4:
            // Stale, and the refresh is ours: this host's other callers get the
            // old value at once; this caller runs fn and returns the new one.
            bump(r->st.stale_hits);
            bump(r->st.lease_wins);
            finish_front(fc, q.o);
            front_done = true;
            lead_and_write(r, base, key, len, q.a, fn, payload, o, true);
            return;
        case 5:
            bump(r->st.lease_wins);
            lead_and_write(r, base, key, len, q.a, fn, payload, o);
            return;
        default:
            break;
    }
    // Wait for another host's leader: register, re-read (the lost-wakeup
    // check), then sleep until a push, the lease's expiry or the bound.
    bump(r->st.waits);
    long long min_token = q.b;
    long long pttl = q.a;
    Waiter w;
    w.base = base;
    // Registered for exactly as long as this frame lives, even if an
    // allocation throws.
    struct Registration {
        sf_redis *r;
        std::list<Waiter *>::iterator it;
        bool on = true;
        void off() {
            if (!on) return;
            std::lock_guard<std::mutex> lk(r->w_mu);
            r->waiters.erase(it);
            on = false;
        }
        ~Registration() { off(); }
    } reg{r, {}};
    {
        std::lock_guard<std::mutex> lk(r->w_mu);
        reg.it = r->waiters.insert(r->waiters.end(), &w);
    }
    auto unregister = [&] { reg.off(); };
    std::int64_t deadline = now_ms() + r->wait_ms;
    bool pushed = false;
    while (true) {
        n = acquire(r, base, 2, min_token, q);
        if (n != Net::ok) {
            unregister();
            return on_down(r, n, key, len, fn, payload, o);
        }
        if (q.kind == 1) {
            if (pushed) bump(r->st.wakeups);
            unregister();
            o = q.o;
            return;
        }
        if (q.kind == 5 || q.kind == 4) {
            // The lease lapsed without a result: ours now (one more run).
            unregister();
            bump(r->st.lease_wins);
            bump(r->st.takeovers);
            lead_and_write(r, base, key, len, q.a, fn, payload, o);
            return;
        }
        pttl = q.a;
        std::int64_t left = deadline - now_ms();
        if (left <= 0) {
            unregister();
            bump(r->st.timeouts);
            o = status_outcome(SF_ETIMEDOUT);
            return;
        }
        // Sleep to just past the lease's expiry (a takeover is then due) or
        // less while the subscriber is down (polling stands in for pushes).
        std::int64_t nap = pttl > 0 ? pttl + 2 : 50;
        if (!r->sub_up.load()) nap = std::min<std::int64_t>(nap, 50);
        nap = std::min(nap, left);
        std::unique_lock<std::mutex> lk(r->w_mu);
        if (!w.woken) w.cv.wait_for(lk, std::chrono::milliseconds(nap), [&] { return w.woken; });
        if (w.woken) pushed = true;
        w.woken = false;
    }
}

int do_call(sf_redis *r, const void *key, size_t len, sf_fn fn, void *payload, sf_result **result) {
    bump(r->st.calls);
    sf_call *fc = nullptr;
    int role = sf_group_begin(r->front, key, len, &fc);
    if (role < 0) return role;
    if (role == SF_FOLLOWER) {
        // The front leader's work is bounded (wait_ms, command timeouts)
        // except for fn's own run time, which a follower shares.  Waiting
        // on the leader's own thread (fn calling back in for its key) is
        // refused with SF_EDEADLK: see sf_call_lead_here below.
        int s = front_result(fc, -1, result);
        sf_call_release(fc);
        return s;
    }
    // This thread does the front flight's work, fn included, so a call for
    // the same key from fn must not wait for it: it would wait for itself.
    sf_call_lead_here(fc);
    Outcome o;
    bool front_done = false;
    try {
        front_lead(r, fc, key, len, fn, payload, o, front_done);
    } catch (...) {
        // Out of memory mid-protocol: the front flight must still finish,
        // or its followers would wait for ever.
        o = status_outcome(SF_ENOMEM);
    }
    if (!front_done) {
        finish_front(fc, o);
        int s = front_result(fc, 0, result);
        sf_call_release(fc);
        return s;
    }
    sf_call_release(fc);
    // The refresher: its own new value, through a private flight so that
    // what it returns is an sf_result like everyone's.
    if (o.kind == 's') return o.code;
    sf_call *own = nullptr;
    int s = sf_group_begin(r->mint, key, len, &own);
    if (s == SF_FOLLOWER) {
        s = front_result(own, -1, result);
        sf_call_release(own);
        return s;
    }
    if (s < 0) return s;
    finish_front(own, o);
    s = front_result(own, 0, result);
    sf_call_release(own);
    return s;
}

char *dup_or_empty(const char *s) { return const_cast<char *>(s ? s : ""); }

}  // namespace

extern "C" {

SF_API const char *sf_redis_strerror(int code) {
#define SF_REDIS_TEXT_(name, value, text) \
    if (code == value) return text;
    SF_REDIS_STATUS_MAP(SF_REDIS_TEXT_)
#undef SF_REDIS_TEXT_
    return sf_strerror(code);
}

SF_API const char *sf_redis_err_name(int code) {
#define SF_REDIS_NAME_(name, value, text) \
    if (code == value) return #name;
    SF_REDIS_STATUS_MAP(SF_REDIS_NAME_)
#undef SF_REDIS_NAME_
    return sf_err_name(code);
}

SF_API int sf_redis_options_init(sf_redis_options *o, unsigned int version) {
    if (!o || version < 1 || version > SF_REDIS_OPTIONS_VERSION) return SF_EINVAL;
    std::memset(o, 0, sizeof *o);
    o->version = version;
    o->host = "127.0.0.1";
    o->port = 6379;
    o->key_prefix = "sf";
    o->lease_ms = 3000;
    o->renew_ms = 0;  // lease_ms / 3, whatever lease_ms becomes
    o->wait_ms = 10000;
    o->soft_ttl_ms = 60000;
    o->hard_ttl_ms = 0;  // = soft_ttl_ms, whatever that becomes
    o->error_ttl_ms = 1000;
    o->cache = 1;
    o->max_value_bytes = 1u << 20;
    o->connect_timeout_ms = 500;
    o->command_timeout_ms = 500;
    o->on_down = SF_REDIS_FALLBACK;
    o->front = nullptr;
    return SF_OK;
}

SF_API int sf_redis_new(sf_redis **out, const sf_redis_options *o) {
    if (!out || !o || o->version < 1 || o->version > SF_REDIS_OPTIONS_VERSION) return SF_EINVAL;
    unsigned renew = o->renew_ms ? o->renew_ms : o->lease_ms / 3;
    unsigned hard = o->hard_ttl_ms ? o->hard_ttl_ms : o->soft_ttl_ms;
    if (o->lease_ms == 0 || renew == 0 || renew >= o->lease_ms || o->wait_ms == 0 ||
        (o->cache && (o->soft_ttl_ms == 0 || hard < o->soft_ttl_ms)) || o->max_value_bytes == 0 ||
        o->max_value_bytes > (512u << 20) || o->command_timeout_ms == 0 ||
        o->connect_timeout_ms == 0 ||
        (o->on_down != SF_REDIS_FALLBACK && o->on_down != SF_REDIS_FAIL) ||
        (!o->unix_path && (o->port <= 0 || o->port > 65535)))
        return SF_EINVAL;
    sf_redis *r = nullptr;
    try {
        r = new sf_redis;
        r->host = o->host ? o->host : "127.0.0.1";
        r->port = o->port;
        r->unix_path = dup_or_empty(o->unix_path);
        r->username = dup_or_empty(o->username);
        r->password = dup_or_empty(o->password);
        r->db = o->db;
        r->prefix = o->key_prefix ? o->key_prefix : "sf";
        // Pub/sub ignores SELECT: the database is part of the channel.
        r->channel = r->prefix + ":" + std::to_string(o->db) + ":sf-done";
        r->lease_ms = o->lease_ms;
        r->renew_ms = renew;
        r->wait_ms = o->wait_ms;
        r->soft_ms = o->soft_ttl_ms;
        r->hard_ms = hard;
        r->error_ms = o->error_ttl_ms;
        r->cache = o->cache != 0;
        r->max_value = o->max_value_bytes;
        r->connect_ms = o->connect_timeout_ms;
        r->command_ms = o->command_timeout_ms;
        r->fail_on_down = o->on_down == SF_REDIS_FAIL;
    } catch (...) {
        delete r;
        return SF_ENOMEM;
    }
    // The first connection: refuse a wrong password or a server that is
    // not Redis now, while the caller can still act on it.
    redisContext *c = nullptr;
    Net n = open_conn(r, r->command_ms, &c);
    if (n == Net::auth || n == Net::proto) {
        delete r;
        return net_status(n);
    }
    if (n == Net::ok) r->idle.push_back(c);
    else r->ever_failed.store(true);

    int s = SF_OK;
    if (o->front) {
        r->front = o->front;
    } else {
        s = sf_group_new(&r->front, nullptr);
        r->own_front = s == SF_OK;
    }
    if (s == SF_OK) s = sf_group_new(&r->inner, nullptr);
    if (s == SF_OK) s = sf_group_new(&r->mint, nullptr);
    if (s == SF_OK && pipe(r->stop_pipe) != 0) s = SF_ENOMEM;
    if (s == SF_OK) {
        try {
            r->subscriber = std::thread(subscriber_main, r);
            r->watchdog = std::thread(watchdog_main, r);
        } catch (...) {
            s = SF_ENOMEM;
        }
    }
    if (s != SF_OK) {
        sf_redis_free(r);
        return s;
    }
    *out = r;
    return SF_OK;
}

SF_API int sf_redis_free(sf_redis *r) {
    if (!r) return SF_OK;
    {
        std::lock_guard<std::mutex> lk(r->stop_mu);
        r->stopping = true;
    }
    r->stop_cv.notify_all();
    if (r->stop_pipe[1] >= 0) {
        char b = 1;
        ssize_t w = write(r->stop_pipe[1], &b, 1);
        (void)w;
    }
    if (r->subscriber.joinable()) r->subscriber.join();
    if (r->watchdog.joinable()) r->watchdog.join();
    for (int fd : r->stop_pipe)
        if (fd >= 0) close(fd);
    for (redisContext *c : r->idle) redisFree(c);
    if (r->inner) sf_group_free(r->inner);
    if (r->mint) sf_group_free(r->mint);
    if (r->own_front) sf_group_free(r->front);
    delete r;
    return SF_OK;
}

SF_API int sf_redis_do(sf_redis *r, const void *key, size_t key_len, sf_fn fn, void *payload,
                       sf_result **result) {
    if (result) *result = nullptr;
    if (!r || !fn || (!key && key_len)) return SF_EINVAL;
    try {
        return do_call(r, key, key_len, fn, payload, result);
    } catch (...) {
        return SF_ENOMEM;
    }
}

SF_API int sf_redis_forget(sf_redis *r, const void *key, size_t key_len) {
    if (!r || (!key && key_len)) return SF_EINVAL;
    try {
        std::string base = redis_base(r, key, key_len);
        Reply rep;
        Net n = roundtrip(r, {"DEL", base + ":val", base + ":fresh"}, rep);
        return n == Net::ok ? SF_OK : net_status(n);
    } catch (...) {
        return SF_ENOMEM;
    }
}

SF_API int sf_redis_stats_get(const sf_redis *r, sf_redis_stats *out) {
    if (!r || !out || out->version != SF_REDIS_STATS_VERSION) return SF_EINVAL;
    auto &s = r->st;
    auto ld = [](const std::atomic<sf_u64> &c) { return c.load(std::memory_order_relaxed); };
    out->calls = ld(s.calls);
    out->executions = ld(s.executions);
    out->hits = ld(s.hits);
    out->stale_hits = ld(s.stale_hits);
    out->lease_wins = ld(s.lease_wins);
    out->waits = ld(s.waits);
    out->wakeups = ld(s.wakeups);
    out->takeovers = ld(s.takeovers);
    out->fallbacks = ld(s.fallbacks);
    out->unavailable = ld(s.unavailable);
    out->fenced = ld(s.fenced);
    out->renewals = ld(s.renewals);
    out->timeouts = ld(s.timeouts);
    out->reconnects = ld(s.reconnects);
    return SF_OK;
}

}  // extern "C"
