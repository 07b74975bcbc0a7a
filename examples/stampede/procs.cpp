// Part 3 of the stampede demo: worker processes.
//
// P worker processes of T threads each serve requests for K hot keys from a
// cache; on a miss a worker loads the row from SQLite through a database
// that serves a few queries at once.  A coordinator makes every hot key
// expire in every cache at the same moment, E times, and a barrier releases
// all P x T threads together each time; each thread then asks for every hot
// key twice.  Three ways:
//
//  - no singleflight: every thread that misses queries;
//  - a group per process (sf_group_new in each worker) and a cache per
//    process: one query per key per process, P per expiry;
//  - the shared group (sf_group_open_shared, one for the host) and a cache
//    in shared memory: one query per key per expiry, whatever P;
//  - the Redis tier (libsingleflight-redis, when built with it): each
//    process stands in for a host of a fleet, with a cache of its own and
//    an sf_redis handle; the hosts' leaders compete for one lease per key in
//    Redis, whose read-through value the other hosts get: one query per key
//    per expiry across the fleet.  A key's Redis name carries the tick
//    ("item:3@7"), so that it expires in Redis when it does in the caches.
//
// The cache must be host-wide for the last to be exact: with a cache per
// process, a worker whose thread reaches the key only after another
// process's flight has completed finds its own cache still empty and leads
// a second flight.  With the host-wide cache it finds the row, and the
// flight's fn re-checks the cache for a caller that missed it just before
// the previous flight stored the row.
#include "procs.hpp"

#include <singleflight.h>
#ifdef SF_STAMPEDE_REDIS
#include <singleflight_redis.h>
#endif

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <memory>
#include <new>
#include <random>
#include <thread>
#include <vector>

#include <dirent.h>
#include <pthread.h>
#include <semaphore.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "common.hpp"

namespace stampede {
namespace {

constexpr int kMaxHotKeys = 64;
constexpr std::size_t kMaxRow = 240;
// A shared group admits 64 attachments; with the group opened before fork
// the parent holds one too.
constexpr int kMaxProcesses = 63;
constexpr int kMaxThreads = 64;

enum class Way { kNone, kPerProcess, kShared, kRedis };

// A row cache of the hot keys.  The same code serves as one worker
// process's cache (in its own memory) and as the host's (in the mapping
// every worker shares): only the memory and the mutexes' pshared flag
// differ.  Rows expire by the coordinator's tick, not by the wall clock: a
// row stored during tick n is fresh until the tick moves on, so every key
// expires in every cache at one moment, exactly E times in a run.
// Thread-safe (and process-safe when made with across_processes).
class TickCache {
public:
    explicit TickCache(bool across_processes) {
        pthread_mutexattr_t a;
        pthread_mutexattr_init(&a);
        pthread_mutexattr_setpshared(
            &a, across_processes ? PTHREAD_PROCESS_SHARED : PTHREAD_PROCESS_PRIVATE);
        for (Slot &s : slots_) pthread_mutex_init(&s.mu, &a);
        pthread_mutexattr_destroy(&a);
    }
    ~TickCache() {
        for (Slot &s : slots_) pthread_mutex_destroy(&s.mu);
    }
    TickCache(const TickCache &) = delete;
    TickCache &operator=(const TickCache &) = delete;

    bool get(int key, std::uint64_t tick, std::string *out) {
        Slot &s = slots_[key];
        pthread_mutex_lock(&s.mu);
        bool fresh = tick < s.fresh_until;
        if (fresh) out->assign(s.row, s.len);
        pthread_mutex_unlock(&s.mu);
        return fresh;
    }
    void put(int key, std::uint64_t tick, const std::string &row) {
        Slot &s = slots_[key];
        pthread_mutex_lock(&s.mu);
        s.len = std::min(row.size(), kMaxRow);
        std::memcpy(s.row, row.data(), s.len);
        s.fresh_until = tick + 1;
        pthread_mutex_unlock(&s.mu);
    }

private:
    struct Slot {
        pthread_mutex_t mu;
        std::uint64_t fresh_until = 0;  // ticks start at 1: empty is stale
        std::size_t len = 0;
        char row[kMaxRow];
    };
    Slot slots_[kMaxHotKeys];
};

// The page every process of one run maps (MAP_SHARED, made before fork).
// The latencies follow it in the same mapping, one float per request.
struct Board {
    Board(unsigned parties, unsigned db_conns) : cache(true) {
        pthread_barrierattr_t a;
        pthread_barrierattr_init(&a);
        pthread_barrierattr_setpshared(&a, PTHREAD_PROCESS_SHARED);
        pthread_barrier_init(&start, &a, parties);
        pthread_barrier_init(&end, &a, parties);
        pthread_barrierattr_destroy(&a);
        sem_init(&db, 1, db_conns);
        for (auto &q : key_queries) q.store(0);
        for (auto &q : key_requests) q.store(0);
    }
    ~Board() {
        pthread_barrier_destroy(&start);
        pthread_barrier_destroy(&end);
        sem_destroy(&db);
    }
    pthread_barrier_t start, end;        // an expiry's beginning and end
    sem_t db;                            // the database's free connections
    std::atomic<std::uint64_t> tick{0};  // the cache clock
    std::atomic<long> queries{0};
    std::atomic<long> key_queries[kMaxHotKeys];   // this expiry's, per key
    std::atomic<long> key_requests[kMaxHotKeys];  // this expiry's, per key
    TickCache cache;                              // the host-wide cache
};
static_assert(std::atomic<long>::is_always_lock_free &&
                  std::atomic<std::uint64_t>::is_always_lock_free,
              "counters in shared memory must be lock-free atomics");

// An anonymous MAP_SHARED mapping: forked children share it with the parent.
class Mapping {
public:
    explicit Mapping(std::size_t bytes) : bytes_(bytes) {
        addr_ = mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
        if (addr_ == MAP_FAILED) die("mmap: " + std::string(std::strerror(errno)));
    }
    ~Mapping() { munmap(addr_, bytes_); }
    Mapping(const Mapping &) = delete;
    Mapping &operator=(const Mapping &) = delete;
    void *addr() const { return addr_; }

private:
    void *addr_;
    std::size_t bytes_;
};

void wait_barrier(pthread_barrier_t *b) {
    int rc = pthread_barrier_wait(b);
    if (rc != 0 && rc != PTHREAD_BARRIER_SERIAL_THREAD) die("pthread_barrier_wait failed");
}

sf_group *open_shared(const std::string &name) {
    sf_shared_options so;
    sf_shared_options_init(&so, SF_SHARED_OPTIONS_VERSION);
    sf_group *g = nullptr;
    int rc = sf_group_open_shared(name.c_str(), &so, &g);
    if (rc != SF_OK) die("sf_group_open_shared(" + name + "): " + sf_strerror(rc));
    return g;
}

void free_group(sf_group *g) {
    int rc = sf_group_free(g);
    if (rc != SF_OK) die(std::string("sf_group_free: ") + sf_strerror(rc));
}

#ifdef SF_STAMPEDE_REDIS
// A worker's ("host's") handle on the Redis tier, opened after fork: its
// connections and threads are its own.  The keys of the run carry its
// unique name as their prefix.  Redis that is down fails the demo (on_down
// FAIL) instead of falling back to this process alone, which would show
// per-process figures under the Redis tier's name.
sf_redis *open_redis(const ProcOptions &o, const std::string &segment) {
    sf_redis_options ro;
    sf_redis_options_init(&ro, SF_REDIS_OPTIONS_VERSION);
    ro.host = o.redis_host.c_str();
    ro.port = o.redis_port;
    ro.key_prefix = segment.c_str();
    ro.soft_ttl_ms = 30000;  // the tick in the key expires it before that
    ro.on_down = SF_REDIS_FAIL;
    // A loaded two-core machine (the CI's) can take longer than the default
    // half second to answer.
    ro.connect_timeout_ms = 5000;
    ro.command_timeout_ms = 5000;
    sf_redis *r = nullptr;
    int rc = sf_redis_new(&r, &ro);
    if (rc != SF_OK) die("sf_redis_new(" + o.redis_host + "): " + sf_redis_strerror(rc));
    return r;
}
#endif

// What a worker process's threads share.
struct Process {
    const ProcOptions *o;
    const std::string *db_path;
    Board *board;
    float *latency_ms;  // the run's, in the mapping
    TickCache *cache;   // the process's own, or the board's
    sf_group *group;    // null without singleflight (and with Redis)
    int index;          // 0..P-1
#ifdef SF_STAMPEDE_REDIS
    sf_redis *redis = nullptr;  // the Redis way's, one per process ("host")
#endif
};

class WorkerThread {
public:
    WorkerThread(Process *p, int t) : p_(p), t_(t), db_(*p->db_path) {}

    // E expiries; in each, every hot key twice, starting at a key of its
    // own so that the threads' first misses spread over the keys.
    void run() {
        const ProcOptions &o = *p_->o;
        const int per_expiry = 2 * o.keys;
        float *lat = p_->latency_ms +
                     std::size_t(p_->index * o.threads + t_) * std::size_t(o.expiries * per_expiry);
        for (int e = 0; e < o.expiries; ++e) {
            wait_barrier(&p_->board->start);
            for (int i = 0; i < per_expiry; ++i) {
                int key = o.zipf > 0 ? zipf_key() : (p_->index + t_ + i) % o.keys;
                p_->board->key_requests[key].fetch_add(1);
                auto t0 = Clock::now();
                if (serve(key).empty()) die("row " + std::to_string(key) + " came back empty");
                *lat++ = std::chrono::duration<float, std::milli>(Clock::now() - t0).count();
            }
            wait_barrier(&p_->board->end);
        }
    }

private:
    std::string serve(int key) {
        // The tick does not move while the threads serve: the coordinator
        // advances it only between the end and start barriers.
        const std::uint64_t tick = p_->board->tick.load();
        std::string row;
        if (p_->cache->get(key, tick, &row)) return row;
#ifdef SF_STAMPEDE_REDIS
        if (p_->redis) return serve_redis(key, tick);
#endif
        if (!p_->group) return load_and_fill(key, tick);

        char name[32];
        int n = std::snprintf(name, sizeof name, "item:%d", key);
        Flight f{this, key, tick};
        sf_result *r = nullptr;
        int rc = sf_group_do(p_->group, name, std::size_t(n), &WorkerThread::fn, &f, &r, nullptr);
        if (rc != SF_OK) die(std::string("sf_group_do: ") + sf_strerror(rc));
        if (sf_result_error(r) != 0) die("the flight's fn failed to store its row");
        // Bytes, one path for both kinds of group: a shared group's value
        // lives in its segment, readable from every process.
        std::size_t len = 0;
        const void *bytes = sf_result_bytes(r, &len);
        row.assign(static_cast<const char *>(bytes), len);
        sf_result_release(r);
        return row;
    }

#ifdef SF_STAMPEDE_REDIS
    // A miss in this host's cache: the row from Redis (another host's
    // flight, or one already stored), or fn's query if this host wins the
    // key's lease; either way this host's cache gets it.
    std::string serve_redis(int key, std::uint64_t tick) {
        char name[48];
        int n = std::snprintf(name, sizeof name, "item:%d@%llu", key, (unsigned long long)tick);
        Flight f{this, key, tick};
        sf_result *r = nullptr;
        int rc = sf_redis_do(p_->redis, name, std::size_t(n), &WorkerThread::fn, &f, &r);
        if (rc != SF_OK) die(std::string("sf_redis_do: ") + sf_redis_strerror(rc));
        if (sf_result_error(r) != 0) die("the flight's fn failed to store its row");
        std::size_t len = 0;
        const void *bytes = sf_result_bytes(r, &len);
        std::string row(static_cast<const char *>(bytes), len);
        sf_result_release(r);
        p_->cache->put(key, tick, row);
        return row;
    }
#endif

    // The query, under the database's connection limit, then the refill.
    std::string load_and_fill(int key, std::uint64_t tick) {
        Board *b = p_->board;
        b->queries.fetch_add(1);
        b->key_queries[key].fetch_add(1);
        while (sem_wait(&b->db) != 0)
            if (errno != EINTR) die("sem_wait failed");
        std::string row = db_.load(key);
        if (p_->o->latency_ms > 0)
            std::this_thread::sleep_for(
                std::chrono::duration<double, std::milli>(p_->o->latency_ms));
        sem_post(&b->db);
        p_->cache->put(key, tick, row);
        return row;
    }

    struct Flight {
        WorkerThread *w;
        int key;
        std::uint64_t tick;
    };

    static int fn(sf_call *call, void *payload) {
        auto *f = static_cast<Flight *>(payload);
        // A caller that missed the cache just before the previous flight
        // for this key stored the row leads a flight of its own once that
        // one has completed: the row is in the cache by then, and this
        // re-check is what keeps it to one query per expiry.
        std::string row;
        if (!f->w->p_->cache->get(f->key, f->tick, &row))
            row = f->w->load_and_fill(f->key, f->tick);
        return sf_call_set_bytes(call, row.data(), row.size()) == SF_OK ? 0 : EIO;
    }

    // The next key of this thread's Zipf stream: key k with weight
    // 1 / (k + 1)^s.
    int zipf_key() {
        if (cdf_.empty()) {
            const ProcOptions &o = *p_->o;
            double sum = 0;
            for (int k = 0; k < o.keys; ++k) cdf_.push_back(sum += 1.0 / std::pow(k + 1.0, o.zipf));
            rng_.seed(std::uint64_t(o.seed) * 1000003u + std::uint64_t(p_->index) * 1009u +
                      std::uint64_t(t_));
        }
        std::uniform_real_distribution<double> u(0.0, cdf_.back());
        auto it = std::upper_bound(cdf_.begin(), cdf_.end(), u(rng_));
        return int(std::min<std::ptrdiff_t>(it - cdf_.begin(), std::ptrdiff_t(cdf_.size()) - 1));
    }

    Process *p_;
    int t_;
    Db db_;  // opened here, after the fork
    std::vector<double> cdf_;
    std::mt19937_64 rng_;
};

// The body of worker process `index`; never returns.
[[noreturn]] void worker_process(const ProcOptions &o, const std::string &db_path, Way way,
                                 Board *board, float *latency_ms, int index,
                                 const std::string &segment, sf_group *inherited, pid_t parent) {
    // A worker outlives no parent: one killed (by a test's timeout, say)
    // must not leave its workers waiting at a barrier for ever.
    if (prctl(PR_SET_PDEATHSIG, SIGKILL) != 0 || getppid() != parent) die("prctl failed");
    std::unique_ptr<TickCache> own;
    Process p{&o, &db_path, board, latency_ms, &board->cache, nullptr, index};
#ifdef SF_STAMPEDE_REDIS
    if (way == Way::kRedis) p.redis = open_redis(o, segment);
#endif
    if (way != Way::kShared) {
        own = std::make_unique<TickCache>(false);
        p.cache = own.get();
    }
    if (way == Way::kPerProcess) {
        int rc = sf_group_new(&p.group, nullptr);
        if (rc != SF_OK) die(std::string("sf_group_new: ") + sf_strerror(rc));
    } else if (way == Way::kShared) {
        // Opened before fork: the child uses its parent's handle (it joins
        // the group as a process of its own at its first call).
        p.group = inherited ? inherited : open_shared(segment);
    }
    std::vector<std::unique_ptr<WorkerThread>> workers;
    for (int t = 0; t < o.threads; ++t) workers.push_back(std::make_unique<WorkerThread>(&p, t));
    std::vector<std::thread> threads;
    for (auto &w : workers) threads.emplace_back([&w] { w->run(); });
    for (auto &th : threads) th.join();
    workers.clear();
    if (p.group) free_group(p.group);
#ifdef SF_STAMPEDE_REDIS
    sf_redis_free(p.redis);
#endif
    std::fflush(nullptr);
    _exit(0);
}

// One way: forks the workers, drives the expiries, gathers the figures.
ProcRun run_way(const ProcOptions &o, const std::string &db_path, Way way,
                const std::string &segment) {
    const int per_expiry = 2 * o.keys;
    const std::size_t samples =
        std::size_t(o.processes) * std::size_t(o.threads) * std::size_t(o.expiries * per_expiry);
    const std::size_t head = (sizeof(Board) + alignof(float) - 1) / alignof(float) * alignof(float);
    Mapping m(head + samples * sizeof(float));
    Board *board =
        new (m.addr()) Board(unsigned(o.processes * o.threads + 1), unsigned(o.db_conns));
    float *latency_ms = reinterpret_cast<float *>(static_cast<char *>(m.addr()) + head);
    std::fill(latency_ms, latency_ms + samples, -1.0f);  // -1: not served

    sf_group *inherited = nullptr;
    if (way == Way::kShared && o.open_before_fork) inherited = open_shared(segment);

    std::fflush(nullptr);  // or every child would print the parent's buffered output again
    const pid_t parent = getpid();
    std::vector<pid_t> pids;
    for (int i = 0; i < o.processes; ++i) {
        pid_t pid = fork();
        if (pid == 0)
            worker_process(o, db_path, way, board, latency_ms, i, segment, inherited, parent);
        if (pid < 0) {
            for (pid_t q : pids) kill(q, SIGKILL);
            die("fork: " + std::string(std::strerror(errno)));
        }
        pids.push_back(pid);
    }

    // The coordinator runs on a thread of its own (started after the forks)
    // so that this one can watch the workers: one that died would leave the
    // others, and the coordinator, waiting at a barrier for ever.
    ProcRun s;
    s.fewest = -1;
    std::thread coordinator([&] {
        Clock::time_point t0{};
        for (int e = 0; e < o.expiries; ++e) {
            board->tick.fetch_add(1);  // every hot key expires in every cache
            wait_barrier(&board->start);
            if (e == 0) t0 = Clock::now();
            wait_barrier(&board->end);
            for (int k = 0; k < o.keys; ++k) {
                long q = board->key_queries[k].exchange(0);
                // A key nobody asked for this expiry (Zipf) expired unseen.
                if (board->key_requests[k].exchange(0) == 0) continue;
                s.pairs++;
                s.fewest = s.fewest < 0 ? q : std::min(s.fewest, q);
                s.most = std::max(s.most, q);
            }
        }
        s.wall_s = std::chrono::duration<double>(Clock::now() - t0).count();
    });
    // pids holds the workers not reaped yet: only they may be killed (a
    // reaped one's pid may already be another process's).
    while (!pids.empty()) {
        int status = 0;
        pid_t pid = waitpid(-1, &status, 0);
        if (pid < 0 && errno == EINTR) continue;
        auto it = std::find(pids.begin(), pids.end(), pid);
        if (pid > 0 && it == pids.end()) continue;  // a child that is not a worker
        if (pid > 0) pids.erase(it);
        if (pid < 0 || !WIFEXITED(status) || WEXITSTATUS(status) != 0) {
            for (pid_t q : pids) kill(q, SIGKILL);
            die("a worker process failed" +
                (pid > 0 && WIFSIGNALED(status)
                     ? std::string(" (signal ") + std::to_string(WTERMSIG(status)) + ")"
                     : std::string()));
        }
    }
    coordinator.join();
    if (inherited) free_group(inherited);

    std::vector<float> lat;
    for (std::size_t i = 0; i < samples; ++i)
        if (latency_ms[i] >= 0) lat.push_back(latency_ms[i]);
    std::sort(lat.begin(), lat.end());
    s.requests = long(lat.size());
    s.db_queries = board->queries.load();
    s.per_key_expiry = s.pairs ? double(s.db_queries) / double(s.pairs) : 0.0;
    s.p50_ms = quantile(lat, 0.50);
    s.p99_ms = quantile(lat, 0.99);
    board->~Board();
    return s;
}

// Whether /dev/shm still has the segment of the shared group called name,
// or one of its doorbells (named after it).
bool segment_left(const std::string &name) {
    const std::string seg = "libsingleflight." + name;
    DIR *d = opendir("/dev/shm");
    if (!d) return false;
    bool left = false;
    while (dirent *e = readdir(d)) {
        std::string f = e->d_name;
        if (f == seg || f.compare(0, seg.size() + 1, seg + ".") == 0) left = true;
    }
    closedir(d);
    return left;
}

std::string run_json(const ProcRun &r) {
    char x[320];
    std::snprintf(x, sizeof x,
                  "{\"requests\":%ld,\"db_queries\":%ld,\"pairs\":%ld,\"per_key_expiry\":%.4f,"
                  "\"fewest_key_expiry\":%ld,\"most_key_expiry\":%ld,"
                  "\"p50_ms\":%.6f,\"p99_ms\":%.4f,\"wall_s\":%.4f}",
                  r.requests, r.db_queries, r.pairs, r.per_key_expiry, r.fewest, r.most, r.p50_ms,
                  r.p99_ms, r.wall_s);
    return x;
}

}  // namespace

std::string proc_options_error(const ProcOptions &o) {
    if (o.processes < 1 || o.processes > kMaxProcesses) return "--processes: 1 to 63";
    if (o.threads < 1 || o.threads > kMaxThreads) return "--proc-threads: 1 to 64";
    if (o.keys < 1 || o.keys > kMaxHotKeys) return "--hot-keys: 1 to 64";
    if (o.expiries < 1 || o.db_conns < 1 || o.latency_ms < 0)
        return "option out of range (see --help)";
    return "";
}

ProcReport run_processes(const ProcOptions &o, const std::string &db_path) {
    std::string bad = proc_options_error(o);
    if (!bad.empty()) die(bad);
    ProcReport r;
    // Unique to the run, so that two demos at once never share a group.
    timespec ts{};
    clock_gettime(CLOCK_MONOTONIC, &ts);
    r.segment = "stampede-" + std::to_string(getpid()) + "-" +
                std::to_string(std::uint64_t(ts.tv_sec) * 1000000000u + std::uint64_t(ts.tv_nsec));
    r.none = run_way(o, db_path, Way::kNone, r.segment);
    r.per_process = run_way(o, db_path, Way::kPerProcess, r.segment);
    r.shared = run_way(o, db_path, Way::kShared, r.segment);
    r.segment_left = segment_left(r.segment);
    if (!o.redis_host.empty()) {
        if (!have_redis()) die("--redis: this stampede was built without the Redis tier (hiredis)");
        r.redis = run_way(o, db_path, Way::kRedis, r.segment);
        r.ran_redis = true;
    }
    return r;
}

bool have_redis() {
#ifdef SF_STAMPEDE_REDIS
    return true;
#else
    return false;
#endif
}

void print_processes(const ProcOptions &o, const ProcReport &r) {
    auto cells = [&](auto f) {
        std::vector<std::string> c{f(r.none), f(r.per_process), f(r.shared)};
        if (r.ran_redis) c.push_back(f(r.redis));
        return c;
    };
    std::vector<std::string> columns{"no singleflight", "group per process", "shared group"};
    if (r.ran_redis) columns.push_back("Redis tier");
    print_table(
        columns,
        {
            {"queries per key per expiry",
             cells([](const ProcRun &x) { return fmt("%.1f", x.per_key_expiry); })},
            {"  fewest - most", cells([](const ProcRun &x) {
                 return std::to_string(x.fewest) + " - " + std::to_string(x.most);
             })},
            {"requests", cells([](const ProcRun &x) { return std::to_string(x.requests); })},
            {"database queries",
             cells([](const ProcRun &x) { return std::to_string(x.db_queries); })},
            {"p50 latency", cells([](const ProcRun &x) { return fmt_latency(x.p50_ms); })},
            {"p99 latency", cells([](const ProcRun &x) { return fmt_latency(x.p99_ms); })},
            {"wall time", cells([](const ProcRun &x) { return fmt("%.2f s", x.wall_s); })},
        });
    std::printf(
        "\n   A group per process still sends one query per process for each key (%d processes);\n"
        "   the shared group (opened %s fork) sends one for the whole host.  Its cache is\n"
        "   host-wide too, in shared memory: with a cache per process, a worker that reaches\n"
        "   the key after another process's flight has completed would query again.\n",
        o.processes, o.open_before_fork ? "before" : "after");
    if (r.ran_redis)
        std::printf(
            "\n   The Redis tier treats each process as a host of a fleet, with a cache of its\n"
            "   own: the hosts' leaders compete for one lease per key in Redis, and the other\n"
            "   hosts read the winner's row from it, so the fleet sends one query per key.\n");
    if (r.segment_left)
        std::printf("\n   warning: /dev/shm still holds libsingleflight.%s after the run\n",
                    r.segment.c_str());
}

std::string processes_json(const ProcOptions &o, const ProcReport &r) {
    return "{\"processes\":" + std::to_string(o.processes) +
           ",\"threads\":" + std::to_string(o.threads) + ",\"keys\":" + std::to_string(o.keys) +
           ",\"expiries\":" + std::to_string(o.expiries) + ",\"zipf\":" + fmt("%.2f", o.zipf) +
           ",\"shared_open\":\"" + (o.open_before_fork ? "before" : "after") + "\",\"segment\":\"" +
           r.segment + "\",\"segment_left\":" + (r.segment_left ? "true" : "false") +
           ",\"none\":" + run_json(r.none) + ",\"per_process\":" + run_json(r.per_process) +
           ",\"shared\":" + run_json(r.shared) +
           (r.ran_redis ? ",\"redis\":" + run_json(r.redis) : std::string()) + "}";
}

}  // namespace stampede
