// libFuzzer target: the input bytes are a program of C API operations run on
// one thread against up to two groups, up to eight call handles and up to
// eight result references, with keys of any bytes and length, NULL arguments
// wherever the API accepts them, and bursts of failing internal allocations.
//
// A model of the flight table predicts every return code, role, result and
// counter; any disagreement, leak (a value not destroyed exactly once) or
// group that cannot be freed at the end aborts, which libFuzzer reports as a
// crash.  Nothing here may block: an operation that would wait for a flight
// nobody can complete on this thread is skipped by the model.
//
// Built two ways: with -fsanitize=fuzzer (fuzz/CMakeLists.txt) and with a
// plain main that replays files (tests/reliability), so every corpus and
// regression input also runs in the ordinary sanitizer CI builds.

#include <singleflight.h>

#include "core/testing.hpp"
#include "fuzz/harness.hpp"

#include <poll.h>

#include <cerrno>
#include <cstdarg>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <map>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

namespace {

using sf_fuzz::die;
using sf_fuzz::Input;
using sf_fuzz::readable_now;
using sf_fuzz::trace;
using sf_fuzz::tracing;

// ---------------------------------------------------------------------------
// Values: counted so that every destroy is checked to run exactly once.
// ---------------------------------------------------------------------------
struct Val {
    uint32_t magic;
    int id;
};
constexpr uint32_t kLive = 0xa11ce5ed, kDead = 0xdeadbeef;
long g_values_live = 0;
int g_next_val = 1;

void destroy_val(void *p) {
    Val *v = static_cast<Val *>(p);
    EXPECT(v->magic == kLive);
    v->magic = kDead;
    g_values_live--;
    delete v;
}
Val *new_val() {
    g_values_live++;
    return new Val{kLive, g_next_val++};
}

// ---------------------------------------------------------------------------
// The model.
// ---------------------------------------------------------------------------
struct MFlight {
    std::string key;
    bool done = false;
    int status = 0;  // SF_OK, SF_EPANIC, SF_EGOEXIT once done
    int err = 0;
    const Val *value = nullptr;
    std::string msg;       // expected panic message
    bool msg_any = false;  // library chooses the text (non-std exception, OOM)
    int joined = 0;        // followers that ever joined
};
using FlightP = std::shared_ptr<MFlight>;

struct MStats {
    uint64_t calls = 0, leaders = 0, followers = 0, panics = 0, goexits = 0, timeouts = 0,
             forgets = 0, in_flight = 0;
};

struct Task {
    sf_task_fn fn;
    void *arg;
};

struct MGroup {
    sf_group *g = nullptr;
    int executor = 0;  // 0 deferred queue, 1 inline, 2 refusing
    std::map<std::string, FlightP> table;
    MStats st;
    std::deque<Task> queue;   // deferred executor
    bool stats_exact = true;  // false once something the model cannot count happened
};

struct Handle {
    sf_call *call = nullptr;
    MGroup *grp = nullptr;
    FlightP f;
    bool leader = false;
    bool on_done = false;
};

struct ResultRef {
    sf_result *r = nullptr;
};

struct State;
State *S = nullptr;

struct State {
    Input in;
    MGroup groups[2];
    Handle handles[8];
    ResultRef results[8];
    long oom_after = -1;  // the hook's setting, mirrored
    int depth = 0;        // nesting of fn calls
    long callbacks_pending = 0;
};

bool oom_active() { return S->oom_after >= 0; }

// A status the library may give in place of the predicted one when an
// allocation can fail.
bool is_enomem(int rc) { return rc == SF_ENOMEM && oom_active(); }

void check_stats(MGroup &m) {
    if (!m.g) return;  // re-creation after op_free failed under allocation failure
    sf_group_stats s;
    std::memset(&s, 0xab, sizeof s);
    s.version = SF_GROUP_STATS_VERSION;
    EXPECT_EQ(sf_group_stats_get(m.g, &s), SF_OK);
    EXPECT_EQ(s.calls, s.leaders + s.followers);
    if (!m.stats_exact) return;
    EXPECT_EQ(s.calls, m.st.calls);
    EXPECT_EQ(s.leaders, m.st.leaders);
    EXPECT_EQ(s.followers, m.st.followers);
    EXPECT_EQ(s.panics, m.st.panics);
    EXPECT_EQ(s.goexits, m.st.goexits);
    EXPECT_EQ(s.timeouts, m.st.timeouts);
    EXPECT_EQ(s.forgets, m.st.forgets);
    EXPECT_EQ(s.in_flight, m.st.in_flight);
}

// Checks a completed result against the model's flight.
void check_result(const MFlight &f, int rc, sf_result *r, int shared, bool follower) {
    EXPECT(f.done);
    EXPECT_EQ(rc, f.status);
    EXPECT(r != nullptr);
    if (f.status == SF_OK) {
        EXPECT_EQ(sf_result_error(r), f.err);
        EXPECT(sf_result_value(r) == f.value);
        EXPECT(sf_result_panic_message(r) == nullptr);
    } else if (f.status == SF_EPANIC) {
        const char *m = sf_result_panic_message(r);
        EXPECT(m != nullptr);
        if (!f.msg_any && f.msg != m) {
            std::fprintf(stderr, "panic message: got '%s', want '%s'\n", m, f.msg.c_str());
            die("panic message", __LINE__, 0, 0);
        }
    } else {
        EXPECT(sf_result_panic_message(r) == nullptr);
    }
    if (follower) EXPECT_EQ(shared, 1);
    else EXPECT_EQ(shared, f.joined > 0 ? 1 : 0);
}

// Completes flight f in the model (before the library call that completes it,
// so that callbacks running inside that call see the final state).
void model_complete(MGroup &m, const FlightP &f, int status, int err) {
    f->done = true;
    f->status = status;
    f->err = err;
    auto it = m.table.find(f->key);
    if (it != m.table.end() && it->second == f) m.table.erase(it);
    if (status == SF_EPANIC) m.st.panics++;
    if (status == SF_EGOEXIT) m.st.goexits++;
    m.st.in_flight--;
}

// A flight starts (or, with undo, a predicted start did not happen).
void model_lead(MGroup &m, bool undo = false) {
    if (undo) {
        m.st.calls--;
        m.st.leaders--;
        m.st.in_flight--;
    } else {
        m.st.calls++;
        m.st.leaders++;
        m.st.in_flight++;
    }
}

// Callback context: which flight and role the callback belongs to.
struct CbCtx {
    FlightP f;
    bool follower;
};

void done_cb(int status, sf_result *r, int shared, void *payload) {
    std::unique_ptr<CbCtx> c(static_cast<CbCtx *>(payload));
    check_result(*c->f, status, r, shared, c->follower);
    S->callbacks_pending--;
}

// ---------------------------------------------------------------------------
// fn: its behaviour is read from the input when it runs.
// ---------------------------------------------------------------------------
struct FnCtx {
    MGroup *m;
    FlightP f;
    bool ran = false;
};

void run_op(bool inside_fn, FnCtx *fc);

int fuzz_fn(sf_call *call, void *payload) {
    FnCtx *fc = static_cast<FnCtx *>(payload);
    EXPECT(!fc->ran);
    fc->ran = true;
    EXPECT_EQ(sf_call_role(call), SF_LEADER);
    EXPECT_EQ(sf_call_finish(call, 0), SF_ESTATE);
    S->depth++;
    // A few operations from inside fn, one level deep.
    int nested = S->depth == 1 ? S->in.byte() % 4 : 0;
    for (int i = 0; i < nested; i++) run_op(true, fc);
    uint8_t how = S->in.byte();
    int err = int(S->in.byte() % 5) - 1;
    if (how & 1) {
        Val *v = new_val();
        sf_call_set_value(call, v, destroy_val);
        fc->f->value = v;
        if (how & 0x40) {
            // Replacing destroys the previous value at once.
            long before = g_values_live;
            sf_call_set_value(call, nullptr, nullptr);
            EXPECT_EQ(g_values_live, before - 1);
            fc->f->value = nullptr;
        }
    }
    S->depth--;
    // The model completes before fn returns: the library completes the
    // flight (and runs callbacks, which check the model) right after.
    MGroup &m = *fc->m;
    switch ((how >> 1) & 7) {
        case 0: {
            std::string msg = S->in.bytes(64);
            fc->f->msg = msg.c_str();       // what the C string carries
            fc->f->msg_any = oom_active();  // the copy may fail
            EXPECT_EQ(sf_call_panic(call, msg.c_str()), SF_OK);
            model_complete(m, fc->f, SF_EPANIC, 0);
            return err;
        }
        case 1: {
            std::string msg = S->in.bytes(64);
            fc->f->msg = msg.c_str();
            fc->f->msg_any = oom_active();
            model_complete(m, fc->f, SF_EPANIC, 0);
            throw std::runtime_error(msg);
        }
        case 2:
            fc->f->msg_any = true;  // the library names a non-std exception
            model_complete(m, fc->f, SF_EPANIC, 0);
            throw 42;
        case 3:
            fc->f->msg = "panic";
            fc->f->msg_any = oom_active();  // even the default text is a copy
            EXPECT_EQ(sf_call_panic(call, nullptr), SF_OK);
            model_complete(m, fc->f, SF_EPANIC, 0);
            return 0;
        default:
            model_complete(m, fc->f, SF_OK, err);
            return err;
    }
}

// Tasks of the deferred and inline executors.
int exec_deferred(sf_task_fn task, void *arg, void *payload) {
    MGroup *m = static_cast<MGroup *>(payload);
    m->queue.push_back(Task{task, arg});
    return 0;
}
int exec_inline(sf_task_fn task, void *arg, void *) {
    task(arg);
    return 0;
}
int exec_refuse(sf_task_fn, void *, void *) { return 1; }

// Async leaders: their FnCtx lives until the task runs.
std::vector<std::unique_ptr<FnCtx>> g_async_ctx;

// Before a task runs, the model cannot know which flight it belongs to; the
// FnCtx carries it, and the completion is recorded after the task returns.
void run_task(MGroup &m) {
    if (m.queue.empty()) return;
    Task t = m.queue.front();
    m.queue.pop_front();
    trace("  running a queued task");
    // Find the ctx whose flight is not done: tasks run in FIFO order, and
    // async leaders are queued in the same order.
    FnCtx *fc = nullptr;
    for (auto &c : g_async_ctx)
        if (c->m == &m && !c->ran) {
            fc = c.get();
            break;
        }
    EXPECT(fc != nullptr);
    // fn's outcome is only known once it ran; callbacks that run inside the
    // task see the model completed by the hook in fuzz_fn's caller below.
    t.fn(t.arg);
    EXPECT(fc->ran);
}

// ---------------------------------------------------------------------------
// Operations
// ---------------------------------------------------------------------------
std::string read_key() {
    uint8_t k = S->in.byte();
    if (k < 200) {
        // A small key set so flights collide.
        static const char *const keys[] = {"", "a", "b", "key", "\0\0"};
        if (k % 5 == 4) return std::string("\0\0", 2);
        return keys[k % 5];
    }
    return S->in.bytes(2000);
}

Handle *free_slot(uint8_t b) {
    Handle &h = S->handles[b % 8];
    return &h;
}

void release_handle(Handle &h) {
    if (!h.call) return;
    if (h.leader && !h.f->done) model_complete(*h.grp, h.f, SF_EGOEXIT, 0);
    sf_call_release(h.call);
    h = Handle();
}

void release_result(ResultRef &r) {
    sf_result_release(r.r);
    r.r = nullptr;
}

void keep_result(sf_result *r) {
    ResultRef &slot = S->results[S->in.byte() % 8];
    release_result(slot);
    slot.r = r;
}

void op_do(MGroup &m, FnCtx *outer) {
    std::string key = read_key();
    bool own_key = outer && outer->m == &m && outer->f->key == key && m.table.count(key) &&
                   m.table[key] == outer->f;
    auto it = m.table.find(key);
    if (it != m.table.end() && !own_key) return;  // would wait forever on this thread
    FnCtx fc{&m, std::make_shared<MFlight>()};
    fc.f->key = key;
    uint8_t flags = S->in.byte();
    sf_result *r = reinterpret_cast<sf_result *>(0x10);
    int shared = -5;
    // Predicted before the call: fn may check the stats from inside.
    if (!own_key) {
        m.table[key] = fc.f;
        model_lead(m);
    }
    int rc;
    try {
        rc = sf_group_do(m.g, key.data(), key.size(), fuzz_fn, &fc, (flags & 1) ? nullptr : &r,
                         (flags & 2) ? nullptr : &shared);
    } catch (...) {
        die("an exception crossed the C boundary", __LINE__, 0, 0);
    }
    trace("  do key[%zu] -> %s%s", key.size(), sf_err_name(rc), fc.ran ? " (fn ran)" : "");
    if (own_key) {
        EXPECT_EQ(rc, SF_EDEADLK);
        EXPECT(!fc.ran);
        if (!(flags & 1)) EXPECT(r == nullptr);
        return;
    }
    if (is_enomem(rc)) {
        EXPECT(!fc.ran);
        m.table.erase(key);
        model_lead(m, true);
        if (!(flags & 1)) EXPECT(r == nullptr);
        return;
    }
    EXPECT(fc.ran);
    EXPECT(fc.f->done);
    if (!(flags & 1)) {
        check_result(*fc.f, rc, r, (flags & 2) ? (fc.f->joined > 0) : shared, false);
        keep_result(r);
    } else {
        EXPECT_EQ(rc, fc.f->status);
    }
}

void op_async(MGroup &m) {
    std::string key = read_key();
    auto it = m.table.find(key);
    bool joins = it != m.table.end();
    FlightP f = joins ? it->second : std::make_shared<MFlight>();
    f->key = key;
    auto *cb = new CbCtx{f, joins};
    std::unique_ptr<FnCtx> fc(new FnCtx{&m, f});
    if (joins) {
        m.st.calls++;
        m.st.followers++;
    } else {
        m.table[key] = f;
        model_lead(m);
    }
    S->callbacks_pending++;
    bool inline_exec = m.executor == 1;
    int rc = sf_group_do_async(m.g, key.data(), key.size(), fuzz_fn, fc.get(), done_cb, cb);
    trace("  do_async key[%zu] %s -> %s", key.size(), joins ? "joins" : "leads", sf_err_name(rc));
    if (is_enomem(rc)) {
        S->callbacks_pending--;
        delete cb;
        if (!joins) {
            m.table.erase(key);
            model_lead(m, true);
        } else {
            m.st.calls--;
            m.st.followers--;
        }
        EXPECT(!fc->ran);
        return;
    }
    if (m.executor == 2 && !joins) {
        // Refused: no fn, no callback; the flight is gone.
        EXPECT_EQ(rc, SF_EBUSY);
        S->callbacks_pending--;
        delete cb;
        m.table.erase(key);
        model_lead(m, true);
        m.stats_exact = false;  // whether a refused flight counts is the library's choice
        return;
    }
    EXPECT_EQ(rc, SF_OK);
    if (joins) {
        f->joined++;
        EXPECT(!fc->ran);
        return;
    }
    if (inline_exec) {
        EXPECT(fc->ran);  // the inline executor ran fn inside the call
        EXPECT(f->done);
        return;
    }
    EXPECT(!fc->ran);
    g_async_ctx.push_back(std::move(fc));
}

void op_begin(MGroup &m, FnCtx *outer) {
    std::string key = read_key();
    Handle *h = free_slot(S->in.byte());
    (void)outer;  // inside fn too: a handle may follow fn's own flight
    release_handle(*h);
    auto it = m.table.find(key);
    bool joins = it != m.table.end();
    sf_call *c = reinterpret_cast<sf_call *>(0x20);
    int rc = sf_group_begin(m.g, key.data(), key.size(), &c);
    trace("  begin key[%zu] -> %s", key.size(), sf_err_name(rc));
    if (is_enomem(rc)) {
        EXPECT(c == nullptr);
        return;
    }
    EXPECT_EQ(rc, joins ? SF_FOLLOWER : SF_LEADER);
    m.st.calls++;
    h->call = c;
    h->grp = &m;
    if (joins) {
        m.st.followers++;
        h->f = it->second;
        h->f->joined++;
    } else {
        m.st.leaders++;
        m.st.in_flight++;
        h->f = std::make_shared<MFlight>();
        h->f->key = key;
        m.table[key] = h->f;
        h->leader = true;
    }
    EXPECT_EQ(sf_call_role(c), rc);
}

void op_handle(uint8_t what) {
    Handle &h = S->handles[S->in.byte() % 8];
    sf_call *c = h.call;  // may be NULL: every verb must accept that
    static const char *const verbs[] = {"set_value", "finish", "panic",   "wait",
                                        "on_done",   "fd",     "release", "role"};
    trace("  %s on %s handle", verbs[what % 8], !c ? "no" : h.leader ? "a leader" : "a follower");
    switch (what % 8) {
        case 0: {  // set_value
            Val *v = new_val();
            long before = g_values_live;
            sf_call_set_value(c, v, destroy_val);
            if (c && h.leader && !h.f->done) {
                // Replacing destroys the previous value at once.
                EXPECT_EQ(g_values_live, before - (h.f->value ? 1 : 0));
                h.f->value = v;
            } else {
                EXPECT_EQ(g_values_live, before - 1);  // refused: destroyed at once
            }
            break;
        }
        case 1: {  // finish
            int err = int(S->in.byte()) - 128;
            if (!c) {
                EXPECT_EQ(sf_call_finish(c, err), SF_EINVAL);
                break;
            }
            bool can = h.leader && !h.f->done;
            if (can) model_complete(*h.grp, h.f, SF_OK, err);
            EXPECT_EQ(sf_call_finish(c, err), can ? SF_OK : SF_ESTATE);
            break;
        }
        case 2: {  // panic
            std::string msg = S->in.bytes(300);
            bool null_msg = msg.empty() && (S->in.byte() & 1);
            if (!c) {
                EXPECT_EQ(sf_call_panic(c, null_msg ? nullptr : msg.c_str()), SF_EINVAL);
                break;
            }
            bool can = h.leader && !h.f->done;
            if (can) {
                h.f->msg = null_msg ? "panic" : msg.c_str();
                if (oom_active()) h.f->msg_any = true;
                model_complete(*h.grp, h.f, SF_EPANIC, 0);
            }
            EXPECT_EQ(sf_call_panic(c, null_msg ? nullptr : msg.c_str()), can ? SF_OK : SF_ESTATE);
            break;
        }
        case 3: {  // wait, never blocking
            sf_result *r = reinterpret_cast<sf_result *>(0x30);
            int shared = -1;
            int64_t to = (S->in.byte() & 1) ? 0 : 1000;
            int rc = sf_call_wait(c, to, &r, &shared);
            if (!c) {
                EXPECT_EQ(rc, SF_EINVAL);
                break;
            }
            if (!h.f->done) {
                if (h.leader) {
                    EXPECT_EQ(rc, SF_EDEADLK);
                } else {
                    EXPECT_EQ(rc, SF_ETIMEDOUT);
                    if (to > 0) h.grp->st.timeouts++;  // a poll (0) is not counted
                }
                EXPECT(r == nullptr);
                break;
            }
            check_result(*h.f, rc, r, shared, !h.leader);
            keep_result(r);
            break;
        }
        case 4: {  // on_done
            if (!c) {
                EXPECT_EQ(sf_call_on_done(c, done_cb, nullptr), SF_EINVAL);
                break;
            }
            if (S->in.byte() & 1) {
                EXPECT_EQ(sf_call_on_done(c, nullptr, nullptr), SF_EINVAL);
                break;
            }
            auto *cb = new CbCtx{h.f, !h.leader};
            S->callbacks_pending++;
            int rc = sf_call_on_done(c, done_cb, cb);
            if (h.on_done) {
                EXPECT_EQ(rc, SF_ESTATE);
            } else if (is_enomem(rc)) {
                // nothing registered
            } else {
                EXPECT_EQ(rc, SF_OK);
                h.on_done = true;
                break;
            }
            S->callbacks_pending--;
            delete cb;
            break;
        }
        case 5: {  // fd
            int fd = sf_call_fd(c);
            if (!c) {
                EXPECT_EQ(fd, SF_EINVAL);
                break;
            }
            if (fd < 0) {
                EXPECT(fd == SF_EBUSY || is_enomem(fd));
                break;
            }
            EXPECT_EQ(sf_call_fd(c), fd);
            EXPECT_EQ(readable_now(fd), h.f->done ? 1 : 0);
            break;
        }
        case 6:
            release_handle(h);
            break;
        default:
            EXPECT_EQ(sf_call_role(c), c ? (h.leader ? SF_LEADER : SF_FOLLOWER) : SF_EINVAL);
            break;
    }
}

void op_forget(MGroup &m) {
    std::string key = read_key();
    bool unshared = S->in.byte() & 1;
    auto it = m.table.find(key);
    int expect = 0;
    if (it != m.table.end() && (!unshared || it->second->joined == 0)) expect = 1;
    int rc = unshared ? sf_group_forget_unshared(m.g, key.data(), key.size())
                      : sf_group_forget(m.g, key.data(), key.size());
    trace("  forget%s key[%zu] -> %d", unshared ? "_unshared" : "", key.size(), rc);
    EXPECT_EQ(rc, expect);
    if (rc == 1) {
        m.table.erase(it);
        m.st.forgets++;
    }
}

void op_results() {
    ResultRef &slot = S->results[S->in.byte() % 8];
    switch (S->in.byte() % 3) {
        case 0:
            release_result(slot);
            break;
        case 1:
            if (slot.r) {
                sf_result *again = sf_result_retain(slot.r);
                EXPECT(again == slot.r);
                keep_result(again);
            }
            break;
        default:
            // Reads on whatever the slot holds, NULL included.
            (void)sf_result_value(slot.r);
            (void)sf_result_error(slot.r);
            (void)sf_result_panic_message(slot.r);
            if (!slot.r) {
                EXPECT(sf_result_value(nullptr) == nullptr);
                EXPECT_EQ(sf_result_error(nullptr), 0);
                EXPECT(sf_result_panic_message(nullptr) == nullptr);
            }
            break;
    }
}

void op_bad_args(MGroup &m) {
    uint8_t b = S->in.byte();
    sf_result *r = reinterpret_cast<sf_result *>(0x40);
    sf_call *c = reinterpret_cast<sf_call *>(0x40);
    switch (b % 12) {
        case 0:
            EXPECT_EQ(sf_group_do(nullptr, "k", 1, fuzz_fn, nullptr, &r, nullptr), SF_EINVAL);
            EXPECT(r == nullptr);
            break;
        case 1:
            EXPECT_EQ(sf_group_do(m.g, nullptr, 1 + S->in.byte(), fuzz_fn, nullptr, &r, nullptr),
                      SF_EINVAL);
            EXPECT(r == nullptr);
            break;
        case 2:
            EXPECT_EQ(sf_group_do(m.g, "k", 1, nullptr, nullptr, &r, nullptr), SF_EINVAL);
            break;
        case 3:
            EXPECT_EQ(sf_group_do_async(m.g, "k", 1, fuzz_fn, nullptr, nullptr, nullptr),
                      SF_EINVAL);
            EXPECT_EQ(sf_group_do_async(m.g, "k", 1, nullptr, nullptr, done_cb, nullptr),
                      SF_EINVAL);
            EXPECT_EQ(sf_group_do_async(nullptr, "k", 1, fuzz_fn, nullptr, done_cb, nullptr),
                      SF_EINVAL);
            break;
        case 4:
            EXPECT_EQ(sf_group_begin(m.g, nullptr, 3, &c), SF_EINVAL);
            EXPECT(c == nullptr);
            EXPECT_EQ(sf_group_begin(m.g, "k", 1, nullptr), SF_EINVAL);
            EXPECT_EQ(sf_group_begin(nullptr, "k", 1, &c), SF_EINVAL);
            break;
        case 5:
            EXPECT_EQ(sf_group_forget(nullptr, "k", 1), SF_EINVAL);
            EXPECT_EQ(sf_group_forget(m.g, nullptr, 9), SF_EINVAL);
            EXPECT_EQ(sf_group_forget_unshared(m.g, nullptr, 9), SF_EINVAL);
            break;
        case 6: {
            sf_group_stats s;
            s.version = S->in.u32();
            int rc = sf_group_stats_get(m.g, &s);
            // Every version from 1 up to this header's is known.
            EXPECT_EQ(rc,
                      s.version >= 1 && s.version <= SF_GROUP_STATS_VERSION ? SF_OK : SF_EINVAL);
            s.version = SF_GROUP_STATS_VERSION;
            EXPECT_EQ(sf_group_stats_get(nullptr, &s), SF_EINVAL);
            EXPECT_EQ(sf_group_stats_get(m.g, nullptr), SF_EINVAL);
            break;
        }
        case 7: {
            int code = int(S->in.u32());
            EXPECT(sf_strerror(code) != nullptr);
            EXPECT(sf_err_name(code) != nullptr);
            EXPECT_EQ(sf_version_number(), SF_VERSION_NUMBER);
            EXPECT(std::strcmp(sf_version_string(), SF_VERSION_STRING) == 0);
            break;
        }
        case 8: {
            sf_group_options o;
            unsigned v = S->in.u32();
            // Every version from 1 up to this header's is known.
            const bool known = v >= 1 && v <= SF_GROUP_OPTIONS_VERSION;
            EXPECT_EQ(sf_group_options_init(&o, v), known ? SF_OK : SF_EINVAL);
            EXPECT_EQ(sf_group_options_init(nullptr, SF_GROUP_OPTIONS_VERSION), SF_EINVAL);
            sf_group_options bad = SF_GROUP_OPTIONS_INIT;
            bad.version = v;
            sf_group *g = reinterpret_cast<sf_group *>(0x50);
            int rc = sf_group_new(&g, &bad);
            if (known) {
                EXPECT(rc == SF_OK || is_enomem(rc));
                if (rc == SF_OK) EXPECT_EQ(sf_group_free(g), SF_OK);
            } else {
                EXPECT_EQ(rc, SF_EINVAL);
            }
            EXPECT_EQ(sf_group_new(nullptr, nullptr), SF_EINVAL);
            EXPECT_EQ(sf_group_free(nullptr), SF_EINVAL);
            break;
        }
        case 9:
            sf_call_release(nullptr);
            sf_result_release(nullptr);
            EXPECT(sf_result_retain(nullptr) == nullptr);
            EXPECT_EQ(sf_call_role(nullptr), SF_EINVAL);
            break;
        case 10: {
            // A NULL key of length 0 is the empty key.
            std::string empty;
            sf_call *h = nullptr;
            auto it = m.table.find(empty);
            int rc = sf_group_begin(m.g, nullptr, 0, &h);
            if (is_enomem(rc)) break;
            EXPECT_EQ(rc, it != m.table.end() ? SF_FOLLOWER : SF_LEADER);
            m.st.calls++;
            if (rc == SF_FOLLOWER) {
                m.st.followers++;
                it->second->joined++;
                sf_call_release(h);
            } else {
                m.st.leaders++;
                m.st.in_flight++;
                auto f = std::make_shared<MFlight>();
                m.table[empty] = f;
                model_complete(m, f, SF_OK, 0);
                EXPECT_EQ(sf_call_finish(h, 0), SF_OK);
                sf_call_release(h);
            }
            break;
        }
        default:
            sf_call_set_value(nullptr, new_val(), destroy_val);  // destroyed at once
            sf_call_set_value(nullptr, nullptr, nullptr);
            break;
    }
}

sf_group *new_group(MGroup &m, unsigned shards) {
    sf_group_options o = SF_GROUP_OPTIONS_INIT;
    o.shards = shards;
    o.executor = m.executor == 0 ? exec_deferred : m.executor == 1 ? exec_inline : exec_refuse;
    o.executor_payload = &m;
    sf_group *g = reinterpret_cast<sf_group *>(0x60);
    int rc = sf_group_new(&g, &o);
    if (is_enomem(rc)) {
        EXPECT(g == reinterpret_cast<sf_group *>(0x60));  // untouched on failure
        return nullptr;
    }
    EXPECT_EQ(rc, SF_OK);
    return g;
}

// sf_group_free is SF_EBUSY while a flight is in flight or a handle is
// unreleased; otherwise it frees, results obtained from the group stay
// valid (the result slots keep them and later reads check that), and a new
// group with the same executor takes its place.
void op_free(MGroup &m) {
    bool busy = m.st.in_flight > 0;
    for (const Handle &h : S->handles)
        if (h.call && h.grp == &m) busy = true;
    int rc = sf_group_free(m.g);
    trace("  free -> %s", sf_err_name(rc));
    if (busy) {
        EXPECT_EQ(rc, SF_EBUSY);
        return;
    }
    EXPECT_EQ(rc, SF_OK);
    EXPECT(m.queue.empty());
    m.table.clear();
    m.st = MStats();
    m.stats_exact = true;
    m.g = new_group(m, 0);
}

void op_oom() {
    uint8_t b = S->in.byte();
    S->oom_after = (b & 0x80) ? -1 : long(b % 6);
    sf::testing::fail_allocations_after(S->oom_after);
}

void run_op(bool inside_fn, FnCtx *fc) {
    uint8_t op = S->in.byte();
    MGroup &m = S->groups[(op >> 7) & 1];
    static const char *const names[] = {"do",       "do",        "do_async", "begin",    "begin",
                                        "handle",   "handle",    "forget",   "run_task", "results",
                                        "bad_args", "oom/stats", "free"};
    trace("%*sop %s group %d%s", S->depth * 4, "", names[(op & 0x7f) % 13], (op >> 7) & 1,
          m.g ? "" : " (no group)");
    if (!m.g) return;
    switch ((op & 0x7f) % 13) {
        case 0:
        case 1:
            op_do(m, fc);
            break;
        case 2:
            if (!inside_fn) op_async(m);
            break;
        case 3:
        case 4:
            op_begin(m, fc);
            break;
        case 5:
        case 6:
            if (!inside_fn) op_handle(S->in.byte());
            break;
        case 7:
            op_forget(m);
            break;
        case 8:
            if (!inside_fn) run_task(m);
            break;
        case 9:
            op_results();
            break;
        case 10:
            op_bad_args(m);
            break;
        case 11:
            if (!inside_fn) op_oom();
            else check_stats(m);
            break;
        default:
            if (!inside_fn) op_free(m);
            break;
    }
    (void)fc;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    State st{Input{data, size}, {}, {}, {}, -1, 0, 0};
    S = &st;
    // Every input starts from the state of a fresh process: empty block
    // caches (whether an allocation happens, and so where an allocation
    // failure lands, depends on them) and the same value ids.  Without this a
    // find could depend on the inputs run before it and not reproduce alone.
    sf::testing::reset_caches();
    sf::testing::fix_group_seeds(true);  // the same home slots in every run
    g_values_live = 0;
    g_next_val = 1;
    g_async_ctx.clear();
    sf::testing::fail_allocations_after(-1);

    uint8_t setup = st.in.byte();
    for (int i = 0; i < 2; i++) {
        MGroup &m = st.groups[i];
        m.executor = ((setup >> (2 * i)) & 3) % 3;
        m.g = new_group(m, (setup & 0x10) ? 1u << (st.in.byte() % 14) : 0);
        EXPECT(m.g != nullptr);
    }

    for (int steps = 0; steps < 400 && st.in.n > 0; steps++) {
        run_op(false, nullptr);
        if (!(steps & 7))
            for (auto &m : st.groups) check_stats(m);
    }

    // Wind down: allocations work again, every queued task runs, every
    // handle and result is dropped, every callback has run, every value is
    // destroyed, and both groups free.
    sf::testing::fail_allocations_after(-1);
    st.oom_after = -1;
    for (auto &m : st.groups)
        while (!m.queue.empty()) run_task(m);
    for (auto &h : st.handles) release_handle(h);
    for (auto &r : st.results) release_result(r);
    EXPECT_EQ(st.callbacks_pending, 0);
    for (auto &m : st.groups) {
        if (!m.g) continue;  // re-creation failed under allocation failure
        check_stats(m);
        sf_group_stats s;
        s.version = SF_GROUP_STATS_VERSION;
        EXPECT_EQ(sf_group_stats_get(m.g, &s), SF_OK);
        EXPECT_EQ(s.in_flight, 0);
        EXPECT_EQ(sf_group_free(m.g), SF_OK);
    }
    g_async_ctx.clear();
    EXPECT_EQ(g_values_live, 0);
    S = nullptr;
    return 0;
}
