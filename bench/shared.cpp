// sfshared: what a group shared by the processes of a host costs, next to
// what people use without it (issue 18, "Measured").  Four measurements, one
// subcommand each:
//
//   sfshared wake [--followers N] [--rounds R] [--json]
//       Cross-process wake latency: from the leader's completion (a
//       CLOCK_MONOTONIC timestamp taken right before it completes, kept in a
//       MAP_SHARED page) to each follower process running again (a timestamp
//       right after its wait returns), for four contenders in the same run:
//         library  a shared group (sf_group_open_shared), followers blocked
//                  in sf_call_wait(-1), the leader's sf_call_finish;
//         futex    a bare process-shared futex broadcast on a MAP_SHARED
//                  word (FUTEX_WAKE without FUTEX_PRIVATE_FLAG), no library;
//         flock    followers block in flock(LOCK_SH) on a file the leader
//                  holds LOCK_EX, the leader unlocks;
//         poll-1ms a shared flag polled every 1 ms (usleep(1000)), the way
//                  lua-resty-lock and python-diskcache wait.
//       The follower processes are forked once and reused.  Each round every
//       follower announces it is about to wait, the leader lets ~2 ms pass so
//       they are really asleep, then completes.  The contenders take turns
//       round by round (the order rotates), so a change of the machine's load
//       hits them all alike.  Without --followers: 1, then 8.
//
//   sfshared dead [--rounds R] [--json]
//       A leader process SIGKILLed inside fn: kill() to the follower (another
//       process, blocked in sf_call_wait) returning SF_EGOEXIT.  Also checks
//       that the next sf_group_begin on the key leads: exits 1 otherwise.
//
//   sfshared call [--iters N] [--reps R] [--json]
//       Uncontended calls in one process, a shared group against a local one
//       (sf_group_new), interleaved repeat by repeat: sf_group_do with no
//       value, sf_group_do with an 8-byte value (sf_call_set_bytes), and the
//       two-phase begin + finish + release.
//
//   sfshared bytes [--iters N] [--reps R] [--sizes 8,32,...] [--json]
//       On a local group, a value as bytes (sf_call_set_bytes, read with
//       sf_result_bytes) against the pointer path (fn mallocs a copy,
//       sf_call_set_value with free as destroy, read with sf_result_value),
//       per uncontended sf_group_do that sets the value and reads it back.
//
// Figures are medians over repeats (call, bytes) or percentiles over every
// sample of every round (wake, dead).  Tables are Markdown, ready for
// docs/performance.md; --json prints one JSON object instead.  Behaviour is
// checked as it runs (every follower of the library is a follower and reads
// the leader's bytes, every dead leader's follower gets SF_EGOEXIT...): a
// violation exits 1.  Timings are never checked.
#include <singleflight.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <climits>
#include <cstdarg>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <new>
#include <string>
#include <vector>

#include <fcntl.h>
#include <pthread.h>
#include <linux/futex.h>
#include <signal.h>
#include <sys/file.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

namespace {

// ---------------------------------------------------------------- basics

[[noreturn]] __attribute__((format(printf, 1, 2))) void die(const char *fmt, ...) {
    std::va_list ap;
    va_start(ap, fmt);
    std::fprintf(stderr, "sfshared: ");
    std::vfprintf(stderr, fmt, ap);
    std::fprintf(stderr, "\n");
    va_end(ap);
    std::exit(1);
}

// CLOCK_MONOTONIC is one clock for every process of the host, so a leader's
// timestamp and a follower's can be subtracted.
std::int64_t mono_ns() {
    timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return std::int64_t(ts.tv_sec) * 1000000000 + ts.tv_nsec;
}

// The calling thread's CPU time: what a single-threaded loop (call, bytes,
// locks) costs, whatever else runs on this shared machine meanwhile; wall
// time would add every preemption to whichever contender it hit.
std::int64_t cpu_ns() {
    timespec ts;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
    return std::int64_t(ts.tv_sec) * 1000000000 + ts.tv_nsec;
}

// Futex calls without FUTEX_PRIVATE_FLAG: the word lives in a MAP_SHARED
// page and the waiters are other processes.
long futex_wait(std::atomic<std::uint32_t> *word, std::uint32_t expected, const timespec *rel) {
    return syscall(SYS_futex, reinterpret_cast<std::uint32_t *>(word), FUTEX_WAIT, expected, rel,
                   nullptr, 0);
}
void futex_wake_all(std::atomic<std::uint32_t> *word) {
    syscall(SYS_futex, reinterpret_cast<std::uint32_t *>(word), FUTEX_WAKE, INT_MAX, nullptr,
            nullptr, 0);
}
static_assert(sizeof(std::atomic<std::uint32_t>) == 4 &&
                  std::atomic<std::uint32_t>::is_always_lock_free,
              "the futex word must be a plain 32-bit word");

// Waits until *word >= target.  The handshakes of the harness (not what is
// measured) use it; the bound turns a dead or stuck process into an error
// instead of a hang.
void wait_at_least(std::atomic<std::uint32_t> *word, std::uint32_t target, const char *what) {
    const std::int64_t deadline = mono_ns() + 30 * std::int64_t(1000000000);
    for (;;) {
        const std::uint32_t v = word->load(std::memory_order_acquire);
        if (v >= target) return;
        const std::int64_t left = deadline - mono_ns();
        if (left <= 0) die("timed out waiting for %s (%ld seen)", what, long(v));
        const std::int64_t slice = std::min<std::int64_t>(left, 100000000);
        timespec rel{time_t(slice / 1000000000), long(slice % 1000000000)};
        futex_wait(word, v, &rel);
    }
}

void bump(std::atomic<std::uint32_t> *word) {
    word->fetch_add(1, std::memory_order_acq_rel);
    futex_wake_all(word);
}

// The p-th quantile by nearest rank (p99 of 100 samples is the 99th).
double quantile(std::vector<double> v, double p) {
    if (v.empty()) return 0;
    std::sort(v.begin(), v.end());
    std::size_t rank = std::size_t(p * double(v.size()) + 0.999999);
    rank = std::max<std::size_t>(1, std::min(rank, v.size()));
    return v[rank - 1];
}
double median(const std::vector<double> &v) { return quantile(v, 0.5); }

// A unique name per run, so concurrent runs (and a run beside the tests)
// never meet in one segment.
std::string group_name(const char *what) {
    return std::string("sfshared-") + what + "-" + std::to_string(getpid());
}

sf_group *open_shared(const std::string &name) {
    sf_shared_options o;
    sf_shared_options_init(&o, SF_SHARED_OPTIONS_VERSION);
    sf_group *g = nullptr;
    const int rc = sf_group_open_shared(name.c_str(), &o, &g);
    if (rc != SF_OK) die("sf_group_open_shared(%s): %s", name.c_str(), sf_strerror(rc));
    return g;
}

// Frees this process's attachment, the last one: the library removes the
// segment then, and a segment left behind would fill /dev/shm run by run.
void free_last(sf_group *g, const std::string &name) {
    if (sf_group_free(g) != SF_OK) die("sf_group_free(%s) failed", name.c_str());
    const std::string path = "/dev/shm/libsingleflight." + name;
    if (access(path.c_str(), F_OK) == 0) die("%s is left behind after the last free", path.c_str());
}

sf_group *open_local() {
    sf_group *g = nullptr;
    if (sf_group_new(&g, nullptr) != SF_OK) die("sf_group_new failed");
    return g;
}

// A page shared by the parent and its forked children.
template <class T>
T *shared_page() {
    void *p = mmap(nullptr, sizeof(T), PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) die("mmap: %s", std::strerror(errno));
    return new (p) T();
}

// A child that outlives its parent (the parent died on an error) would wait
// on the harness forever: it follows the parent.
void follow_parent(pid_t parent) {
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    if (getppid() != parent) _exit(1);
}

void reap(pid_t pid, const char *what) {
    int st = 0;
    if (waitpid(pid, &st, 0) != pid) die("waitpid(%s): %s", what, std::strerror(errno));
    if (!WIFEXITED(st) || WEXITSTATUS(st) != 0)
        die("the %s process failed (wait status %d)", what, st);
}

// ---------------------------------------------------------------- output

struct Out {
    bool json = false;
    std::string body;  // the JSON object's members, comma-separated
    void member(const std::string &name, const std::string &value) {
        if (!body.empty()) body += ",";
        body += "\"" + name + "\":" + value;
    }
    void finish() const {
        if (json) std::printf("{%s}\n", body.c_str());
    }
};

std::string num(double v) {
    char b[64];
    std::snprintf(b, sizeof b, "%.3f", v);
    return b;
}

// ---------------------------------------------------------------- wake

enum Contender : std::uint32_t { kLibrary, kFutex, kFlock, kPoll, kQuit = 99 };
constexpr int kContenders = 4;
const char *const kContenderName[kContenders] = {"library", "futex", "flock", "poll-1ms"};

constexpr int kMaxFollowers = 32;
constexpr char kWakeKey[] = "sfshared:wake";

// The harness's page.  seq announces a round (the followers futex-wait on
// it); ready counts the followers about to wait, done those that woke and
// wrote their timestamp.  wake_word and poll_flag are the futex and polling
// contenders' own words; t_complete the leader's completion timestamp.
struct Ctl {
    std::atomic<std::uint32_t> seq{0};
    std::atomic<std::uint32_t> contender{0};
    std::atomic<std::uint32_t> ready{0};
    std::atomic<std::uint32_t> done{0};
    std::atomic<std::uint32_t> wake_word{0};
    std::atomic<std::uint32_t> poll_flag{0};
    std::atomic<std::uint32_t> in_fn{0};
    std::atomic<std::int64_t> t_complete{0};
    std::int64_t t_woken[kMaxFollowers];
    int status[kMaxFollowers];  // 0, or what went wrong (a follower's error)
};

// One follower process of `wake`: waits for each round's announcement, then
// waits the round's way and writes when it ran again.
[[noreturn]] void wake_follower(Ctl *ctl, int me, const std::string &name, const char *lockpath) {
    sf_group *g = open_shared(name);
    // Its own open file description: flock locks belong to one, and the one
    // inherited across fork is the leader's.
    const int fd = open(lockpath, O_RDWR);
    if (fd < 0) _exit(1);
    std::uint32_t seen = 0;
    for (;;) {
        std::uint32_t s;
        while ((s = ctl->seq.load(std::memory_order_acquire)) == seen)
            futex_wait(&ctl->seq, s, nullptr);
        seen = s;
        const std::uint32_t c = ctl->contender.load(std::memory_order_acquire);
        if (c == kQuit) break;
        std::int64_t t = 0;
        int err = 0;
        if (c == kLibrary) {
            sf_call *call = nullptr;
            if (sf_group_begin(g, kWakeKey, sizeof kWakeKey - 1, &call) != SF_FOLLOWER) {
                err = 1;  // the leader began before the round and waits for us: a bug
                bump(&ctl->ready);
            } else {
                bump(&ctl->ready);
                sf_result *r = nullptr;
                const int rc = sf_call_wait(call, -1, &r, nullptr);
                t = mono_ns();
                size_t n = 0;
                const void *v = rc == SF_OK ? sf_result_bytes(r, &n) : nullptr;
                if (rc != SF_OK) err = 2;
                else if (n != sizeof s || std::memcmp(v, &s, sizeof s) != 0) err = 3;
                sf_result_release(r);
            }
            if (call) sf_call_release(call);
        } else if (c == kFutex) {
            bump(&ctl->ready);
            while (ctl->wake_word.load(std::memory_order_acquire) == 0)
                futex_wait(&ctl->wake_word, 0, nullptr);
            t = mono_ns();
        } else if (c == kFlock) {
            bump(&ctl->ready);
            if (flock(fd, LOCK_SH) != 0) err = 4;
            t = mono_ns();
            flock(fd, LOCK_UN);
        } else {
            bump(&ctl->ready);
            while (ctl->poll_flag.load(std::memory_order_acquire) != s) usleep(1000);
            t = mono_ns();
        }
        ctl->t_woken[me] = t;
        ctl->status[me] = err;
        bump(&ctl->done);
    }
    close(fd);
    _exit(sf_group_free(g) == SF_OK ? 0 : 1);
}

// One round of one contender, led by this process: appends each follower's
// wake latency, in microseconds, to out.
void wake_round(Ctl *ctl, sf_group *g, int lockfd, int followers, Contender c, int settle_us,
                std::vector<double> &out) {
    const std::uint32_t s = ctl->seq.load(std::memory_order_relaxed) + 1;
    sf_call *call = nullptr;
    if (c == kLibrary && sf_group_begin(g, kWakeKey, sizeof kWakeKey - 1, &call) != SF_LEADER)
        die("wake: the leader's begin did not lead");
    if (c == kFlock && flock(lockfd, LOCK_EX) != 0) die("flock: %s", std::strerror(errno));
    ctl->wake_word.store(0, std::memory_order_relaxed);
    ctl->ready.store(0, std::memory_order_relaxed);
    ctl->done.store(0, std::memory_order_relaxed);
    ctl->contender.store(c, std::memory_order_relaxed);
    ctl->seq.store(s, std::memory_order_release);
    futex_wake_all(&ctl->seq);
    wait_at_least(&ctl->ready, std::uint32_t(followers), "followers to be ready");
    usleep(useconds_t(settle_us));  // let them reach the kernel and sleep

    std::int64_t t0;
    if (c == kLibrary) {
        if (sf_call_set_bytes(call, &s, sizeof s) != SF_OK) die("sf_call_set_bytes failed");
        t0 = mono_ns();
        ctl->t_complete.store(t0, std::memory_order_relaxed);
        if (sf_call_finish(call, 0) != SF_OK) die("sf_call_finish failed");
    } else if (c == kFutex) {
        t0 = mono_ns();
        ctl->t_complete.store(t0, std::memory_order_relaxed);
        ctl->wake_word.store(1, std::memory_order_release);
        futex_wake_all(&ctl->wake_word);
    } else if (c == kFlock) {
        t0 = mono_ns();
        ctl->t_complete.store(t0, std::memory_order_relaxed);
        flock(lockfd, LOCK_UN);
    } else {
        t0 = mono_ns();
        ctl->t_complete.store(t0, std::memory_order_relaxed);
        ctl->poll_flag.store(s, std::memory_order_release);
    }
    wait_at_least(&ctl->done, std::uint32_t(followers), "followers to wake");
    if (call) sf_call_release(call);
    for (int i = 0; i < followers; ++i) {
        if (ctl->status[i] != 0)
            die("wake: a follower of %s failed (error %d)", kContenderName[c], ctl->status[i]);
        out.push_back(double(ctl->t_woken[i] - ctl->t_complete.load()) / 1000.0);
    }
}

struct WakeRow {
    int followers;
    double p50[kContenders], p99[kContenders];
    std::size_t samples;
};

WakeRow wake_run(int followers, int rounds) {
    Ctl *ctl = shared_page<Ctl>();
    const std::string name = group_name("wake");
    char lockpath[] = "/tmp/sfshared-flock-XXXXXX";
    const int lockfd = mkstemp(lockpath);
    if (lockfd < 0) die("mkstemp: %s", std::strerror(errno));

    // The followers open the group by name, as unrelated processes would;
    // they are forked before this process opens it (so before it has the
    // library's helper thread).
    const pid_t parent = getpid();
    std::vector<pid_t> kids;
    for (int i = 0; i < followers; ++i) {
        const pid_t pid = fork();
        if (pid < 0) die("fork: %s", std::strerror(errno));
        if (pid == 0) {
            follow_parent(parent);
            wake_follower(ctl, i, name, lockpath);
        }
        kids.push_back(pid);
    }
    sf_group *g = open_shared(name);

    // The settling time is 2 ms plus a part of a millisecond that moves
    // round by round (a fixed golden-ratio sequence, the same in every run):
    // with a fixed 2 ms, a poller that started its 1 ms sleeps when it
    // announced itself would be woken by its timer just after every
    // completion, and polling would look ten times faster than it is.
    std::vector<double> lat[kContenders];
    for (int r = 0; r < rounds; ++r) {
        const double phase = (double(r) + 0.5) * 0.6180339887498949;
        const int settle_us = 2000 + int((phase - double(long(phase))) * 1000.0);
        for (int k = 0; k < kContenders; ++k) {
            const int c = (r + k) % kContenders;
            wake_round(ctl, g, lockfd, followers, Contender(c), settle_us, lat[c]);
        }
    }

    ctl->contender.store(kQuit, std::memory_order_relaxed);
    ctl->seq.fetch_add(1, std::memory_order_release);
    futex_wake_all(&ctl->seq);
    for (pid_t pid : kids) reap(pid, "follower");
    free_last(g, name);
    close(lockfd);
    unlink(lockpath);
    munmap(ctl, sizeof *ctl);

    WakeRow row{followers, {}, {}, lat[0].size()};
    for (int c = 0; c < kContenders; ++c) {
        row.p50[c] = quantile(lat[c], 0.50);
        row.p99[c] = quantile(lat[c], 0.99);
    }
    return row;
}

int cmd_wake(const std::vector<int> &counts, int rounds, Out &out) {
    std::vector<WakeRow> rows;
    for (int f : counts) rows.push_back(wake_run(f, rounds));
    if (!out.json) {
        std::printf(
            "cross-process wake, completion to follower running, %d rounds, contenders "
            "interleaved\n\n",
            rounds);
        std::printf("| contender | followers | p50 µs | p99 µs | p99 / futex p99 |\n");
        std::printf("|---|---:|---:|---:|---:|\n");
        for (const WakeRow &w : rows)
            for (int c = 0; c < kContenders; ++c)
                std::printf("| %s | %d | %.1f | %.1f | %.2fx |\n", kContenderName[c], w.followers,
                            w.p50[c], w.p99[c], w.p99[c] / w.p99[kFutex]);
        std::printf("\n");
        for (const WakeRow &w : rows)
            std::printf(
                "library p99 / futex p99 to %d follower%s: %.2fx (target <= 1.2x), %zu "
                "samples each\n",
                w.followers, w.followers == 1 ? "" : "s", w.p99[kLibrary] / w.p99[kFutex],
                w.samples);
        return 0;
    }
    std::string a;
    for (const WakeRow &w : rows) {
        for (int c = 0; c < kContenders; ++c) {
            if (!a.empty()) a += ",";
            a += std::string("{\"contender\":\"") + kContenderName[c] +
                 "\",\"followers\":" + std::to_string(w.followers) +
                 ",\"samples\":" + std::to_string(w.samples) + ",\"p50_us\":" + num(w.p50[c]) +
                 ",\"p99_us\":" + num(w.p99[c]) +
                 ",\"p99_vs_futex\":" + num(w.p99[c] / w.p99[kFutex]) + "}";
        }
    }
    out.member("wake", "{\"rounds\":" + std::to_string(rounds) + ",\"rows\":[" + a + "]}");
    return 0;
}

// ---------------------------------------------------------------- dead

constexpr char kDeadKey[] = "sfshared:dead";

// The doomed leader's fn: says it is inside, then waits to be killed.
int hang_in_fn(sf_call *, void *p) {
    bump(&static_cast<Ctl *>(p)->in_fn);
    for (;;) pause();
}

// The follower process of `dead`: each round, joins the flight of the
// leader that is about to die and waits for it.
[[noreturn]] void dead_follower(Ctl *ctl, const std::string &name) {
    sf_group *g = open_shared(name);
    std::uint32_t seen = 0;
    for (;;) {
        std::uint32_t s;
        while ((s = ctl->seq.load(std::memory_order_acquire)) == seen)
            futex_wait(&ctl->seq, s, nullptr);
        seen = s;
        if (ctl->contender.load(std::memory_order_acquire) == kQuit) break;
        sf_call *call = nullptr;
        int rc = sf_group_begin(g, kDeadKey, sizeof kDeadKey - 1, &call);
        bump(&ctl->ready);
        if (rc == SF_FOLLOWER) {
            rc = sf_call_wait(call, -1, nullptr, nullptr);
            ctl->t_woken[0] = mono_ns();
            ctl->status[0] = rc;
        } else {
            ctl->status[0] = 1000 + rc;  // not a follower: the round is void
        }
        if (call) sf_call_release(call);
        bump(&ctl->done);
    }
    _exit(sf_group_free(g) == SF_OK ? 0 : 1);
}

int cmd_dead(int rounds, Out &out) {
    Ctl *ctl = shared_page<Ctl>();
    const std::string name = group_name("dead");
    const pid_t parent = getpid();
    const pid_t follower = fork();
    if (follower < 0) die("fork: %s", std::strerror(errno));
    if (follower == 0) {
        follow_parent(parent);
        dead_follower(ctl, name);
    }
    sf_group *g = open_shared(name);

    std::vector<double> lat;  // ms
    for (int r = 0; r < rounds; ++r) {
        // The leader is a child using this process's handle (a forked child
        // may: it becomes a process of the group at its first call).
        const std::uint32_t target = ctl->in_fn.load() + 1;
        const pid_t leader = fork();
        if (leader < 0) die("fork: %s", std::strerror(errno));
        if (leader == 0) {
            follow_parent(parent);
            sf_group_do(g, kDeadKey, sizeof kDeadKey - 1, hang_in_fn, ctl, nullptr, nullptr);
            _exit(3);  // fn never returns: reaching here is a failure
        }
        wait_at_least(&ctl->in_fn, target, "the leader to be inside fn");

        ctl->ready.store(0, std::memory_order_relaxed);
        ctl->done.store(0, std::memory_order_relaxed);
        ctl->status[0] = -1;
        ctl->contender.store(0, std::memory_order_relaxed);
        ctl->seq.fetch_add(1, std::memory_order_release);
        futex_wake_all(&ctl->seq);
        wait_at_least(&ctl->ready, 1, "the follower to join");
        usleep(2000);  // let it sleep in sf_call_wait

        const std::int64_t t0 = mono_ns();
        kill(leader, SIGKILL);
        wait_at_least(&ctl->done, 1, "the follower to be released");
        int st = 0;
        waitpid(leader, &st, 0);
        if (!WIFSIGNALED(st) || WTERMSIG(st) != SIGKILL)
            die("dead: the leader did not die by SIGKILL (wait status %d)", st);
        if (ctl->status[0] != SF_EGOEXIT)
            die("dead: round %d: the follower got %d instead of SF_EGOEXIT", r, ctl->status[0]);
        lat.push_back(double(ctl->t_woken[0] - t0) / 1e6);

        // The key is not left stuck: the next caller leads a fresh flight.
        sf_call *call = nullptr;
        const int role = sf_group_begin(g, kDeadKey, sizeof kDeadKey - 1, &call);
        if (role != SF_LEADER)
            die("dead: round %d: the next begin after the kill did not lead (%d)", r, role);
        if (sf_call_finish(call, 0) != SF_OK) die("dead: sf_call_finish failed");
        sf_call_release(call);
    }
    ctl->contender.store(kQuit, std::memory_order_relaxed);
    ctl->seq.fetch_add(1, std::memory_order_release);
    futex_wake_all(&ctl->seq);
    reap(follower, "follower");
    free_last(g, name);
    munmap(ctl, sizeof *ctl);

    const double p50 = quantile(lat, 0.5), p99 = quantile(lat, 0.99), mx = quantile(lat, 1.0);
    if (out.json) {
        out.member("dead", "{\"rounds\":" + std::to_string(rounds) + ",\"p50_ms\":" + num(p50) +
                               ",\"p99_ms\":" + num(p99) + ",\"max_ms\":" + num(mx) +
                               ",\"next_begin_led\":true}");
        return 0;
    }
    std::printf(
        "leader process SIGKILLed inside fn: kill() to the follower process returning "
        "SF_EGOEXIT, %d rounds\n\n",
        rounds);
    std::printf("| rounds | p50 ms | p99 ms | max ms | target p99 |\n|---:|---:|---:|---:|---:|\n");
    std::printf("| %d | %.3f | %.3f | %.3f | <= 100 ms (%s) |\n\n", rounds, p50, p99, mx,
                p99 <= 100 ? "met" : "missed");
    std::printf("every follower got SF_EGOEXIT; the next begin led a fresh flight every round\n");
    return 0;
}

// ---------------------------------------------------------------- call

int fn_nothing(sf_call *, void *) { return 0; }
int fn_bytes8(sf_call *call, void *p) { return sf_call_set_bytes(call, p, 8) == SF_OK ? 0 : 1; }

volatile unsigned char g_sink;

constexpr char kCallKey[] = "key:0001";

enum CallOp { kDoNothing, kDoBytes8, kBeginFinish, kCallOps };
const char *const kCallOpName[kCallOps] = {"sf_group_do, no value", "sf_group_do, 8-byte value",
                                           "begin + finish + release"};
const char *const kCallOpId[kCallOps] = {"do", "do_bytes8", "begin_finish"};

// ns per call of one operation, iters times on one group.
double call_op(sf_group *g, CallOp op, long iters) {
    static const std::uint64_t value = 0x0123456789abcdefull;
    const std::int64_t t0 = cpu_ns();
    for (long i = 0; i < iters; ++i) {
        if (op == kBeginFinish) {
            sf_call *call = nullptr;
            if (sf_group_begin(g, kCallKey, 8, &call) != SF_LEADER) die("call: begin did not lead");
            if (sf_call_finish(call, 0) != SF_OK) die("call: finish failed");
            sf_call_release(call);
            continue;
        }
        sf_result *r = nullptr;
        const sf_fn fn = op == kDoNothing ? fn_nothing : fn_bytes8;
        if (sf_group_do(g, kCallKey, 8, fn, const_cast<std::uint64_t *>(&value), &r, nullptr) !=
            SF_OK)
            die("call: sf_group_do failed");
        if (op == kDoBytes8) {
            size_t n = 0;
            const void *v = sf_result_bytes(r, &n);
            if (n != 8) die("call: sf_result_bytes gave another length");
            g_sink = static_cast<const unsigned char *>(v)[7];  // read it, as a caller would
        }
        sf_result_release(r);
    }
    return double(cpu_ns() - t0) / double(iters);
}

int cmd_call(long iters, int reps, Out &out) {
    const std::string name = group_name("call");
    sf_group *shared = open_shared(name);
    sf_group *local = open_local();
    std::vector<double> t[kCallOps][2];      // [op][0 local, 1 shared]
    for (int op = 0; op < kCallOps; ++op) {  // warm both
        call_op(local, CallOp(op), iters / 10 + 1);
        call_op(shared, CallOp(op), iters / 10 + 1);
    }
    // Repeat by repeat, each operation on both groups, which goes first
    // alternating.
    for (int r = 0; r < reps; ++r)
        for (int op = 0; op < kCallOps; ++op)
            for (int k = 0; k < 2; ++k) {
                const int which = (r + k) % 2;
                t[op][which].push_back(call_op(which ? shared : local, CallOp(op), iters));
            }
    free_last(shared, name);
    if (sf_group_free(local) != SF_OK) die("sf_group_free failed");

    if (!out.json) {
        std::printf(
            "uncontended calls in one process (thread CPU time), median of %d interleaved "
            "repeats of %ld calls\n\n",
            reps, iters);
        std::printf("| operation | local group ns | shared group ns | shared / local |\n");
        std::printf("|---|---:|---:|---:|\n");
    }
    std::string a;
    for (int op = 0; op < kCallOps; ++op) {
        const double l = median(t[op][0]), s = median(t[op][1]);
        if (!out.json) std::printf("| %s | %.1f | %.1f | %.2fx |\n", kCallOpName[op], l, s, s / l);
        if (!a.empty()) a += ",";
        a += std::string("{\"op\":\"") + kCallOpId[op] + "\",\"local_ns\":" + num(l) +
             ",\"shared_ns\":" + num(s) + ",\"ratio\":" + num(s / l) + "}";
    }
    if (!out.json) std::printf("\ntarget: shared / local <= 3x\n");
    out.member("call", "{\"iters\":" + std::to_string(iters) + ",\"reps\":" + std::to_string(reps) +
                           ",\"rows\":[" + a + "]}");
    return 0;
}

// ---------------------------------------------------------------- locks

// What one lock round trip costs in a page shared between processes, for
// the kinds of lock a shared table could use; an uncontended shared
// sf_group_do takes three (join or lead, publish, free).  Side by side in
// one run: the robust process-shared mutex the library uses (trylock as its
// fast path), the same without robustness, and a bare compare-and-swap word
// lock of the kind that would need the library's own dead-owner recovery.
enum LockKind { kRobust, kPlain, kCas, kLockKinds };
const char *const kLockName[kLockKinds] = {"robust pshared mutex (the library's)",
                                           "plain pshared mutex", "CAS word + release store"};
const char *const kLockId[kLockKinds] = {"robust", "plain", "cas"};

struct LockPage {
    pthread_mutex_t robust, plain;
    std::atomic<std::uint32_t> word;
};

double lock_op(LockPage *p, LockKind k, long iters) {
    const std::int64_t t0 = cpu_ns();
    for (long i = 0; i < iters; ++i) {
        switch (k) {
            case kRobust:
                if (pthread_mutex_trylock(&p->robust) != 0) die("locks: robust trylock failed");
                pthread_mutex_unlock(&p->robust);
                break;
            case kPlain:
                if (pthread_mutex_trylock(&p->plain) != 0) die("locks: trylock failed");
                pthread_mutex_unlock(&p->plain);
                break;
            default: {
                std::uint32_t free_word = 0;
                if (!p->word.compare_exchange_strong(free_word, 7, std::memory_order_acquire))
                    die("locks: CAS failed");
                p->word.store(0, std::memory_order_release);
            }
        }
    }
    return double(cpu_ns() - t0) / double(iters);
}

int cmd_locks(long iters, int reps, Out &out) {
    void *mem =
        mmap(nullptr, sizeof(LockPage), PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (mem == MAP_FAILED) die("locks: mmap failed");
    auto *p = new (mem) LockPage;
    pthread_mutexattr_t a;
    pthread_mutexattr_init(&a);
    pthread_mutexattr_setpshared(&a, PTHREAD_PROCESS_SHARED);
    pthread_mutex_init(&p->plain, &a);
    pthread_mutexattr_setrobust(&a, PTHREAD_MUTEX_ROBUST);
    pthread_mutex_init(&p->robust, &a);
    pthread_mutexattr_destroy(&a);
    p->word.store(0);
    std::vector<double> t[kLockKinds];
    for (int k = 0; k < kLockKinds; ++k) lock_op(p, LockKind(k), iters / 10 + 1);
    for (int r = 0; r < reps; ++r)
        for (int j = 0; j < kLockKinds; ++j) {
            const int k = (r + j) % kLockKinds;
            t[k].push_back(lock_op(p, LockKind(k), iters));
        }
    if (!out.json) {
        std::printf(
            "lock + unlock in a MAP_SHARED page, uncontended, median of %d interleaved "
            "repeats of %ld\n\n| lock | ns per round trip | x the CAS word |\n|---|---:|---:|\n",
            reps, iters);
    }
    std::string rows;
    const double cas = median(t[kCas]);
    for (int k = 0; k < kLockKinds; ++k) {
        const double m = median(t[k]);
        if (!out.json) std::printf("| %s | %.1f | %.2fx |\n", kLockName[k], m, m / cas);
        if (!rows.empty()) rows += ",";
        rows += std::string("{\"lock\":\"") + kLockId[k] + "\",\"ns\":" + num(m) + "}";
    }
    out.member("locks", "{\"iters\":" + std::to_string(iters) + ",\"rows\":[" + rows + "]}");
    munmap(mem, sizeof(LockPage));
    return 0;
}

// ---------------------------------------------------------------- bytes

struct Job {
    const unsigned char *src;
    size_t len;
};

int set_pointer(sf_call *call, void *p) {
    auto *j = static_cast<Job *>(p);
    void *copy = std::malloc(j->len);
    if (!copy) return 1;
    std::memcpy(copy, j->src, j->len);
    sf_call_set_value(call, copy, std::free);
    return 0;
}

int set_bytes(sf_call *call, void *p) {
    auto *j = static_cast<Job *>(p);
    return sf_call_set_bytes(call, j->src, j->len) == SF_OK ? 0 : 1;
}

double bytes_op(sf_group *g, bool bytes, Job &job, long iters) {
    const std::int64_t t0 = cpu_ns();
    for (long i = 0; i < iters; ++i) {
        sf_result *r = nullptr;
        if (sf_group_do(g, kCallKey, 8, bytes ? set_bytes : set_pointer, &job, &r, nullptr) !=
            SF_OK)
            die("bytes: sf_group_do failed");
        size_t n = job.len;
        const void *v = bytes ? sf_result_bytes(r, &n) : sf_result_value(r);
        if (!v || n != job.len) die("bytes: the value read back is not the one set");
        g_sink = static_cast<const unsigned char *>(v)[n - 1];  // read it, as a caller would
        sf_result_release(r);
    }
    return double(cpu_ns() - t0) / double(iters);
}

int cmd_bytes(long iters, int reps, const std::vector<int> &sizes, Out &out) {
    sf_group *g = open_local();
    const int most = *std::max_element(sizes.begin(), sizes.end());
    std::vector<unsigned char> src(size_t(most), 0x5a);
    if (!out.json) {
        std::printf(
            "a value on a local group, per uncontended sf_group_do that sets it and reads it "
            "back, median of %d interleaved repeats of %ld calls\n\n",
            reps, iters);
        std::printf(
            "| value bytes | pointer path (malloc + set_value + result_value) ns | bytes "
            "path (set_bytes + result_bytes) ns | bytes / pointer |\n");
        std::printf("|---:|---:|---:|---:|\n");
    }
    std::string a;
    for (int len : sizes) {
        Job job{src.data(), size_t(len)};
        std::vector<double> p, b;
        bytes_op(g, false, job, iters / 10 + 1);  // warm both
        bytes_op(g, true, job, iters / 10 + 1);
        for (int r = 0; r < reps; ++r) {
            if (r % 2) {
                p.push_back(bytes_op(g, false, job, iters));
                b.push_back(bytes_op(g, true, job, iters));
            } else {
                b.push_back(bytes_op(g, true, job, iters));
                p.push_back(bytes_op(g, false, job, iters));
            }
        }
        const double pm = median(p), bm = median(b);
        if (!out.json) std::printf("| %d | %.1f | %.1f | %.2fx |\n", len, pm, bm, bm / pm);
        if (!a.empty()) a += ",";
        a += "{\"bytes\":" + std::to_string(len) + ",\"pointer_ns\":" + num(pm) +
             ",\"bytes_ns\":" + num(bm) + ",\"ratio\":" + num(bm / pm) + "}";
    }
    if (sf_group_free(g) != SF_OK) die("sf_group_free failed");
    if (!out.json) std::printf("\ntarget: bytes / pointer <= 1x for values up to 64 bytes\n");
    out.member("bytes", "{\"iters\":" + std::to_string(iters) +
                            ",\"reps\":" + std::to_string(reps) + ",\"rows\":[" + a + "]}");
    return 0;
}

// ---------------------------------------------------------------- main

[[noreturn]] void usage() {
    std::fprintf(stderr,
                 "usage: sfshared wake  [--followers N] [--rounds R] [--json]\n"
                 "       sfshared dead  [--rounds R] [--json]\n"
                 "       sfshared call  [--iters N] [--reps R] [--json]\n"
                 "       sfshared bytes [--iters N] [--reps R] [--sizes 8,32,64,256] [--json]\n"
                 "       sfshared locks [--iters N] [--reps R] [--json]\n");
    std::exit(2);
}

long positive(const char *s, long most) {
    char *end = nullptr;
    const long v = std::strtol(s, &end, 10);
    if (!*s || *end || v < 1 || v > most) usage();
    return v;
}

std::vector<int> int_list(const char *s, long most) {
    std::vector<int> v;
    std::string item;
    for (const char *p = s;; ++p) {
        if (*p == ',' || !*p) {
            v.push_back(int(positive(item.c_str(), most)));
            item.clear();
            if (!*p) break;
        } else {
            item += *p;
        }
    }
    return v;
}

}  // namespace

int main(int argc, char **argv) {
    if (argc < 2) usage();
    const std::string cmd = argv[1];
    // Defaults sized so each subcommand finishes well under 30 s here.
    long rounds = cmd == "dead" ? 1000 : 500, iters = 200000;
    int reps = 9;
    std::vector<int> followers{1, 8}, sizes{8, 32, 64, 256};
    Out out;
    for (int i = 2; i < argc; ++i) {
        const std::string a = argv[i];
        const char *v = i + 1 < argc ? argv[i + 1] : nullptr;
        if (a == "--json") {
            out.json = true;
            continue;
        }
        if (!v) usage();
        if (a == "--rounds") rounds = positive(v, 1000000);
        else if (a == "--iters") iters = positive(v, 1000000000);
        else if (a == "--reps") reps = int(positive(v, 1000));
        else if (a == "--followers") followers = int_list(v, kMaxFollowers);
        else if (a == "--sizes") sizes = int_list(v, 1 << 20);
        else usage();
        ++i;
    }
    int rc;
    if (cmd == "wake") rc = cmd_wake(followers, int(rounds), out);
    else if (cmd == "dead") rc = cmd_dead(int(rounds), out);
    else if (cmd == "call") rc = cmd_call(iters, reps, out);
    else if (cmd == "bytes") rc = cmd_bytes(iters, reps, sizes, out);
    else if (cmd == "locks") rc = cmd_locks(iters * 10, reps, out);
    else usage();
    out.finish();
    return rc;
}
