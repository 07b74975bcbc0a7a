// stampede: a cache stampede on an embedded SQLite database, each part run
// without singleflight and with it.
//
// Workers read rows through an in-memory cache; on a miss a worker loads the
// row from SQLite (plus an optional artificial latency, standing in for a
// remote database, which serves only a few queries at once).
//
//  1. The stampede itself: the hottest key expires while all T worker
//     threads want it.  A barrier releases them together, E times.  Without
//     singleflight every worker that misses queries the database for the
//     same row (about T queries per expiry); with it one does and the others
//     share its result (exactly one).
//  2. Mixed traffic: the workers serve M requests for Zipf-distributed keys
//     whose cache entries expire after a TTL.  Most misses are then on
//     different keys, so the saving is smaller.
//  3. Across processes (procs.cpp): P forked worker processes of a few
//     threads each, K hot keys expiring E times; without singleflight, with
//     a group per process (P queries per key per expiry) and with the shared
//     group of the host (exactly one); with --redis, also the Redis tier,
//     each process standing in for a host of a fleet (exactly one across
//     the fleet).
//
//   stampede [--threads 32] [--expiries 20] [--requests 20000] [--keys 200]
//            [--latency-ms 2] [--ttl-ms 20] [--zipf 1.1] [--db-conns 4]
//            [--seed 1] [--processes 8] [--proc-threads 4] [--hot-keys 4]
//            [--shared-open after|before] [--redis HOST:PORT] [--proc-zipf]
//            [--part 1,2,3] [--quick]
//            [--no-progress] [--json]
#include <singleflight.h>
#include <sqlite3.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <initializer_list>
#include <memory>
#include <mutex>
#include <random>
#include <string>
#include <string_view>
#include <thread>
#include <unordered_map>
#include <vector>

#include <unistd.h>

#include "common.hpp"
#include "procs.hpp"

namespace {

using namespace stampede;

struct Options {
    int threads = 32;
    int expiries = 20;
    long requests = 20000;
    int keys = 200;
    double latency_ms = 2.0;
    double ttl_ms = 20.0;
    double zipf = 1.1;
    int db_conns = 4;
    unsigned seed = 1;
    bool progress = true;
    bool json = false;
    bool part[4] = {false, true, true, true};  // part[n]: run part n
    ProcOptions procs;                         // part 3's own (the rest are copied in)
};

void usage() {
    std::puts(
        "usage: stampede [options]\n"
        "  --threads N      worker threads (default 32)\n"
        "  --expiries N     part 1: times the hottest key expires under every thread (default 20)\n"
        "  --requests N     part 2: requests in each run (default 20000)\n"
        "  --keys N         rows in the table, requested with Zipf popularity (default 200)\n"
        "  --latency-ms X   extra latency added to every database query (default 2)\n"
        "  --ttl-ms X       part 2: how long a cached row stays fresh (default 20)\n"
        "  --zipf S         Zipf exponent; larger is more skewed (default 1.1)\n"
        "  --db-conns N     queries the database serves at once; the rest queue (default 4)\n"
        "  --seed N         request stream seed (default 1)\n"
        "  --processes N    part 3: worker processes (default 8)\n"
        "  --proc-threads N part 3: threads in each worker process (default 4)\n"
        "  --hot-keys N     part 3: hot keys, each expiring --expiries times (default 4)\n"
        "  --shared-open W  part 3: the shared group is opened 'after' fork by each worker\n"
        "                   (default) or 'before' fork by the parent\n"
        "  --proc-zipf      part 3: each thread's requests in an expiry follow --zipf over the\n"
        "                   hot keys (seeded by --seed) instead of asking for every key twice\n"
        "  --redis H:P      part 3: also the Redis tier (libsingleflight-redis), each process\n"
        "                   a host of a fleet, on the Redis server at H:P\n"
        "  --part LIST      the parts to run, for example 3 or 1,2 (default 1,2,3)\n"
        "  --quick          small defaults for a test: --threads 8 --expiries 5 --requests 2000\n"
        "                   --keys 20 --latency-ms 1 (options given too take precedence)\n"
        "  --no-progress    no progress bar\n"
        "  --json           print the results as one JSON object instead of a table");
}

Options parse(int argc, char **argv) {
    Options o;
    bool proc_zipf = false;
    // --quick first, wherever it is, so that the options given with it win.
    for (int i = 1; i < argc; ++i)
        if (std::string_view(argv[i]) == "--quick") {
            o.threads = 8;
            o.expiries = 5;
            o.requests = 2000;
            o.keys = 20;
            o.latency_ms = 1.0;
        }
    for (int i = 1; i < argc; ++i) {
        std::string_view a = argv[i];
        auto val = [&]() -> const char * {
            if (i + 1 >= argc) die("missing value for " + std::string(a));
            return argv[++i];
        };
        if (a == "--threads") o.threads = std::atoi(val());
        else if (a == "--expiries") o.expiries = std::atoi(val());
        else if (a == "--requests") o.requests = std::atol(val());
        else if (a == "--keys") o.keys = std::atoi(val());
        else if (a == "--latency-ms") o.latency_ms = std::atof(val());
        else if (a == "--ttl-ms") o.ttl_ms = std::atof(val());
        else if (a == "--zipf") o.zipf = std::atof(val());
        else if (a == "--db-conns") o.db_conns = std::atoi(val());
        else if (a == "--seed") o.seed = unsigned(std::atol(val()));
        else if (a == "--processes") o.procs.processes = std::atoi(val());
        else if (a == "--proc-threads") o.procs.threads = std::atoi(val());
        else if (a == "--hot-keys") o.procs.keys = std::atoi(val());
        else if (a == "--proc-zipf") proc_zipf = true;
        else if (a == "--redis") {
            std::string hp = val();
            std::size_t colon = hp.rfind(':');
            if (colon == std::string::npos || colon == 0) die("--redis takes HOST:PORT");
            o.procs.redis_host = hp.substr(0, colon);
            o.procs.redis_port = std::atoi(hp.c_str() + colon + 1);
            if (o.procs.redis_port < 1 || o.procs.redis_port > 65535) die("--redis: bad port");
            if (!have_redis())
                die("--redis: this stampede was built without the Redis tier (hiredis)");
        } else if (a == "--shared-open") {
            std::string_view w = val();
            if (w != "after" && w != "before") die("--shared-open takes after or before");
            o.procs.open_before_fork = w == "before";
        } else if (a == "--part") {
            std::string_view list = val();
            std::fill(std::begin(o.part), std::end(o.part), false);
            for (char c : list)
                if (c >= '1' && c <= '3') o.part[c - '0'] = true;
                else if (c != ',') die("--part takes a list of 1, 2 and 3");
        } else if (a == "--quick") continue;  // read above
        else if (a == "--no-progress") o.progress = false;
        else if (a == "--json") o.json = true;
        else if (a == "-h" || a == "--help") {
            usage();
            std::exit(0);
        } else {
            usage();
            die("unknown option " + std::string(a));
        }
    }
    if (o.threads < 1 || o.threads > 1024 || o.expiries < 1 || o.requests < 1 || o.keys < 1 ||
        o.latency_ms < 0 || o.ttl_ms < 0 || o.zipf <= 0 || o.db_conns < 1)
        die("option out of range (see --help)");
    o.procs.expiries = o.expiries;
    if (proc_zipf) {
        o.procs.zipf = o.zipf;
        o.procs.seed = o.seed;
    }
    o.procs.latency_ms = o.latency_ms;
    o.procs.db_conns = o.db_conns;
    if (o.part[3]) {
        std::string bad = proc_options_error(o.procs);
        if (!bad.empty()) die(bad);
        if (o.procs.keys > o.keys) die("--hot-keys is more than --keys");
    }
    return o;
}

// ------------------------------------------------------------------ the cache

// Sharded so that the cache itself is not what the workers queue on: the
// point is to watch the database, not a cache lock.
class Cache {
public:
    bool get(const std::string &key, Clock::time_point now, std::string *out) {
        Shard &s = shard(key);
        std::lock_guard<std::mutex> lk(s.mu);
        auto it = s.map.find(key);
        if (it == s.map.end() || it->second.expires <= now) return false;
        *out = it->second.value;
        return true;
    }
    void put(const std::string &key, const std::string &value, Clock::time_point expires) {
        Shard &s = shard(key);
        std::lock_guard<std::mutex> lk(s.mu);
        Entry &e = s.map[key];
        e.value = value;
        e.expires = expires;
    }
    // The entry expires now, whatever its TTL said.
    void expire(const std::string &key) {
        Shard &s = shard(key);
        std::lock_guard<std::mutex> lk(s.mu);
        s.map.erase(key);
    }

private:
    struct Entry {
        std::string value;
        Clock::time_point expires;
    };
    struct alignas(64) Shard {
        std::mutex mu;
        std::unordered_map<std::string, Entry> map;
    };
    Shard &shard(const std::string &key) {
        return shards_[std::hash<std::string>()(key) % kShards];
    }
    static constexpr std::size_t kShards = 64;
    Shard shards_[kShards];
};

// A database serves a bounded number of queries at once (its connection
// pool); the rest wait.  This is what turns duplicate queries into latency
// for everyone, hot key or not.
class Gate {
public:
    explicit Gate(int n) : free_(n) {}
    void enter() {
        std::unique_lock<std::mutex> lk(mu_);
        cv_.wait(lk, [&] { return free_ > 0; });
        --free_;
    }
    void leave() {
        {
            std::lock_guard<std::mutex> lk(mu_);
            ++free_;
        }
        cv_.notify_one();
    }

private:
    std::mutex mu_;
    std::condition_variable cv_;
    int free_;
};

// Releases the threads that wait on it all at once, when the last of n
// arrives; reusable, round after round.
class Barrier {
public:
    explicit Barrier(int n) : n_(n) {}
    void arrive_and_wait() {
        std::unique_lock<std::mutex> lk(mu_);
        unsigned long gen = generation_;
        if (++arrived_ == n_) {
            arrived_ = 0;
            ++generation_;
            cv_.notify_all();
            return;
        }
        cv_.wait(lk, [&] { return generation_ != gen; });
    }

private:
    std::mutex mu_;
    std::condition_variable cv_;
    const int n_;
    int arrived_ = 0;
    unsigned long generation_ = 0;
};

// ------------------------------------------------------------------ one run

struct RunStats {
    long requests = 0;
    long db_queries = 0;
    long misses = 0;
    long max_round_queries = 0;  // part 1: the most queries one expiry caused
    double p50_ms = 0, p99_ms = 0, wall_s = 0;
};

struct Shared {
    const Options *o;
    const std::vector<int> *stream;
    std::string db_path;
    Cache cache;
    Gate gate;
    Clock::duration ttl;
    Shared(int conns, Clock::duration ttl_) : gate(conns), ttl(ttl_) {}
    sf_group *group = nullptr;  // null: run without singleflight
    std::atomic<long> next{0};
    std::atomic<long> done{0};
    std::atomic<long> db_queries{0};
    std::atomic<long> misses{0};
};

struct Worker {
    Shared *sh;
    Db db;
    std::vector<float> latency_ms;
    explicit Worker(Shared *s) : sh(s), db(s->db_path) {}

    // The slow path every miss takes without singleflight, and the leader
    // takes with it: query, pretend the database is remote, refill the cache.
    std::string load_and_fill(int id, const std::string &key) {
        sh->db_queries.fetch_add(1, std::memory_order_relaxed);
        sh->gate.enter();
        std::string row = db.load(id);
        if (sh->o->latency_ms > 0)
            std::this_thread::sleep_for(
                std::chrono::duration<double, std::milli>(sh->o->latency_ms));
        sh->gate.leave();
        sh->cache.put(key, row, Clock::now() + sh->ttl);
        return row;
    }

    struct Flight {
        Worker *w;
        int id;
        const std::string *key;
    };

    static int fn(sf_call *call, void *payload) {
        auto *f = static_cast<Flight *>(payload);
        // A worker can miss just as the previous flight for this key lands:
        // it then leads a new flight, and the fresh entry makes a query
        // unnecessary.  This re-check is the usual companion of singleflight.
        std::string row;
        if (!f->w->sh->cache.get(*f->key, Clock::now(), &row))
            row = f->w->load_and_fill(f->id, *f->key);
        sf_call_set_value(call, new std::string(std::move(row)),
                          [](void *v) { delete static_cast<std::string *>(v); });
        return 0;
    }

    std::string serve(int id) {
        std::string key = "item:" + std::to_string(id);
        std::string row;
        if (sh->cache.get(key, Clock::now(), &row)) return row;
        sh->misses.fetch_add(1, std::memory_order_relaxed);
        if (!sh->group) return load_and_fill(id, key);

        Flight f{this, id, &key};
        sf_result *r = nullptr;
        int rc = sf_group_do(sh->group, key.data(), key.size(), &Worker::fn, &f, &r, nullptr);
        if (rc != SF_OK) die(std::string("sf_group_do: ") + sf_strerror(rc));
        row = *static_cast<std::string *>(sf_result_value(r));
        sf_result_release(r);
        return row;
    }

    std::size_t timed_serve(int id) {
        auto t0 = Clock::now();
        std::size_t n = serve(id).size();
        latency_ms.push_back(std::chrono::duration<float, std::milli>(Clock::now() - t0).count());
        sh->done.fetch_add(1, std::memory_order_relaxed);
        return n;
    }

    // Part 2: requests from the shared stream until it runs out.
    void run_mixed() {
        const auto &stream = *sh->stream;
        long n = long(stream.size());
        std::size_t checksum = 0;
        for (;;) {
            long i = sh->next.fetch_add(1, std::memory_order_relaxed);
            if (i >= n) break;
            checksum += timed_serve(stream[std::size_t(i)]);
        }
        if (checksum == 0) die("every row came back empty");
    }

    // Part 1: one request for the hot key per round, all workers released
    // together by the barrier once the key has expired; the second barrier
    // ends the round before the next expiry.
    void run_stampede(Barrier &start, Barrier &end, int rounds, int hot) {
        std::size_t checksum = 0;
        for (int r = 0; r < rounds; ++r) {
            start.arrive_and_wait();
            checksum += timed_serve(hot);
            end.arrive_and_wait();
        }
        if (checksum == 0) die("every row came back empty");
    }
};

void draw_bar(const char *label, long done, long total, double secs) {
    const int width = 30;
    int fill = total ? int(double(done) / double(total) * width) : width;
    char bar[width + 1];
    for (int i = 0; i < width; ++i) bar[i] = i < fill ? '#' : '.';
    bar[width] = 0;
    std::fprintf(stderr, "\r  %-24s [%s] %3ld%%  %ld/%ld  %.1fs ", label, bar,
                 total ? done * 100 / total : 100, done, total, secs);
    std::fflush(stderr);
}

// One run of one part: starts the workers (each runs body(worker)), lets
// drive(shared, bar, stats) steer them from this thread and draw the
// progress bar with bar(requests done), joins them once drive has returned
// and they have served total requests, and gathers the figures.
template <class Body, class Drive>
RunStats run(const Options &o, const std::string &db_path, const std::vector<int> *stream,
             Clock::duration ttl, bool with_sf, long total, bool progress, Body body, Drive drive) {
    Shared sh(o.db_conns, ttl);
    sh.o = &o;
    sh.stream = stream;
    sh.db_path = db_path;
    if (with_sf) {
        int rc = sf_group_new(&sh.group, nullptr);
        if (rc != SF_OK) die(std::string("sf_group_new: ") + sf_strerror(rc));
    }
    std::vector<std::unique_ptr<Worker>> workers;
    for (int t = 0; t < o.threads; ++t) workers.push_back(std::make_unique<Worker>(&sh));

    const char *label = with_sf ? "with singleflight" : "without singleflight";
    auto t0 = Clock::now();
    auto drawn = t0 - std::chrono::seconds(1);
    auto bar = [&](long done) {  // at most 20 redraws a second
        auto now = Clock::now();
        if (!progress || now - drawn < std::chrono::milliseconds(50)) return;
        drawn = now;
        draw_bar(label, done, total, std::chrono::duration<double>(now - t0).count());
    };
    std::vector<std::thread> threads;
    for (auto &w : workers) threads.emplace_back([&body, &w] { body(*w); });
    RunStats s;
    drive(sh, bar, s);
    for (auto &th : threads) th.join();
    double wall = std::chrono::duration<double>(Clock::now() - t0).count();
    if (progress) {
        draw_bar(label, total, total, wall);
        std::fputc('\n', stderr);
    }

    std::vector<float> lat;
    for (auto &w : workers) lat.insert(lat.end(), w->latency_ms.begin(), w->latency_ms.end());
    std::sort(lat.begin(), lat.end());

    s.requests = long(lat.size());
    s.db_queries = sh.db_queries.load();
    s.misses = sh.misses.load();
    s.p50_ms = quantile(lat, 0.50);
    s.p99_ms = quantile(lat, 0.99);
    s.wall_s = wall;
    if (sh.group) {
        workers.clear();
        int rc = sf_group_free(sh.group);
        if (rc != SF_OK) die(std::string("sf_group_free: ") + sf_strerror(rc));
    }
    return s;
}

// Part 1.  Cached rows never expire by age here: the hot key expires when
// this thread says so, at the start of each round, while every worker waits
// at the barrier.  So with singleflight the one flight's refill serves the
// whole round, and its single query per expiry is a certainty, not luck.
RunStats run_stampede(const Options &o, const std::string &db_path, bool with_sf, bool progress) {
    const int hot = 0;  // rank 1 of the Zipf popularity: the hottest key
    const std::string hot_key = "item:" + std::to_string(hot);
    Barrier start(o.threads + 1), end(o.threads + 1);
    return run(
        o, db_path, nullptr, Clock::duration::max() / 4, with_sf, long(o.threads) * o.expiries,
        progress, [&](Worker &w) { w.run_stampede(start, end, o.expiries, hot); },
        [&](Shared &sh, auto &bar, RunStats &s) {
            for (int r = 0; r < o.expiries; ++r) {
                long before = sh.db_queries.load();
                sh.cache.expire(hot_key);
                start.arrive_and_wait();  // every worker asks for it now
                end.arrive_and_wait();    // every worker has its row
                s.max_round_queries = std::max(s.max_round_queries, sh.db_queries.load() - before);
                bar(sh.done.load());
            }
        });
}

// Part 2: the request stream, spread over the workers as they come free.
RunStats run_mixed(const Options &o, const std::vector<int> &stream, const std::string &db_path,
                   bool with_sf, bool progress) {
    const long total = long(stream.size());
    auto ttl = std::chrono::duration_cast<Clock::duration>(
        std::chrono::duration<double, std::milli>(o.ttl_ms));
    return run(
        o, db_path, &stream, ttl, with_sf, total, progress, [](Worker &w) { w.run_mixed(); },
        [&](Shared &sh, auto &bar, RunStats &) {
            if (!progress) return;
            while (sh.done.load() < total) {
                bar(sh.done.load());
                std::this_thread::sleep_for(std::chrono::milliseconds(100));
            }
        });
}

}  // namespace

int main(int argc, char **argv) {
    Options o = parse(argc, argv);
    if (sf_version_number() != SF_VERSION_NUMBER)
        die("libsingleflight header and library versions differ");
    bool progress = o.progress && !o.json && isatty(STDERR_FILENO);

    // A scratch database file: SQLite in-memory databases are private to one
    // connection, and every worker needs its own connection.
    const char *tmp = std::getenv("TMPDIR");
    std::string path = std::string(tmp && *tmp ? tmp : "/tmp") + "/stampede-XXXXXX";
    std::vector<char> buf(path.begin(), path.end());
    buf.push_back(0);
    int fd = mkstemp(buf.data());
    if (fd < 0) die("cannot create a temporary file for the database");
    close(fd);
    path = buf.data();
    create_db(path, o.keys);

    // One request stream for both runs, so they serve exactly the same keys.
    std::vector<double> cdf(std::size_t(o.keys));
    double sum = 0;
    for (int i = 0; i < o.keys; ++i)
        cdf[std::size_t(i)] = (sum += 1.0 / std::pow(double(i + 1), o.zipf));
    std::mt19937_64 rng(o.seed);
    std::uniform_real_distribution<double> u(0.0, sum);
    std::vector<int> stream(std::size_t(o.requests));
    for (auto &k : stream)
        k = int(std::min<std::ptrdiff_t>(
            std::upper_bound(cdf.begin(), cdf.end(), u(rng)) - cdf.begin(), o.keys - 1));

    if (!o.json) {
        std::printf("cache stampede on SQLite: +%.1f ms per query, %d database connections\n",
                    o.latency_ms, o.db_conns);
        std::fflush(stdout);
    }
    std::string json;  // the parts' objects, comma-separated
    auto add_json = [&](const char *name, const std::string &obj) {
        json += (json.empty() ? "\"" : ",\"") + std::string(name) + "\":" + obj;
    };
    auto obj = [](const RunStats &r, bool rounds) {
        std::string most =
            rounds ? "\"max_round_queries\":" + std::to_string(r.max_round_queries) + "," : "";
        char x[320];
        std::snprintf(
            x, sizeof x,
            "{\"requests\":%ld,\"db_queries\":%ld,\"cache_misses\":%ld,\"suppressed\":%ld,%s"
            "\"p50_ms\":%.4f,\"p99_ms\":%.4f,\"wall_s\":%.4f}",
            r.requests, r.db_queries, r.misses, r.misses - r.db_queries, most.c_str(), r.p50_ms,
            r.p99_ms, r.wall_s);
        return std::string(x);
    };
    const std::vector<std::string> two = {"without singleflight", "with singleflight"};

    if (o.part[1]) {
        if (!o.json) {
            std::printf(
                "\n1. The stampede: the hottest key expires while all %d threads want it, %d "
                "times;\n"
                "   a barrier releases the threads together each time.\n",
                o.threads, o.expiries);
            std::fflush(stdout);
        }
        RunStats sa = run_stampede(o, path, false, progress);
        RunStats sb = run_stampede(o, path, true, progress);
        auto per_expiry = [&](const RunStats &r) {
            return fmt("%.1f", double(r.db_queries) / o.expiries);
        };
        if (o.json)
            add_json("stampede", "{\"expiries\":" + std::to_string(o.expiries) + ",\"without\":" +
                                     obj(sa, true) + ",\"with\":" + obj(sb, true) + "}");
        else {
            print_table(
                two,
                {
                    {"queries per expiry", {per_expiry(sa), per_expiry(sb)}},
                    {"most in one expiry",
                     {std::to_string(sa.max_round_queries), std::to_string(sb.max_round_queries)}},
                    {"requests", {std::to_string(sa.requests), std::to_string(sb.requests)}},
                    {"database queries",
                     {std::to_string(sa.db_queries), std::to_string(sb.db_queries)}},
                    {"p50 latency", {fmt_latency(sa.p50_ms), fmt_latency(sb.p50_ms)}},
                    {"p99 latency", {fmt_latency(sa.p99_ms), fmt_latency(sb.p99_ms)}},
                    {"wall time", {fmt("%.2f s", sa.wall_s), fmt("%.2f s", sb.wall_s)}},
                });
            std::printf(
                "\n   Each expiry sent %s queries for the same row to the database without "
                "singleflight,\n"
                "   %s with it: one thread queried, the others shared its row.\n",
                per_expiry(sa).c_str(), per_expiry(sb).c_str());
        }
    }

    if (o.part[2]) {
        if (!o.json) {
            std::printf(
                "\n2. Mixed traffic: %d threads, %ld requests for %d keys (Zipf s=%.2f), each row "
                "cached\n   for %.0f ms.\n",
                o.threads, o.requests, o.keys, o.zipf, o.ttl_ms);
            std::fflush(stdout);
        }
        RunStats a = run_mixed(o, stream, path, false, progress);
        RunStats b = run_mixed(o, stream, path, true, progress);
        if (o.json)
            add_json("mixed", "{\"requests\":" + std::to_string(o.requests) + ",\"without\":" +
                                  obj(a, false) + ",\"with\":" + obj(b, false) + "}");
        else {
            print_table(two,
                        {
                            {"requests", {std::to_string(a.requests), std::to_string(b.requests)}},
                            {"database queries",
                             {std::to_string(a.db_queries), std::to_string(b.db_queries)}},
                            {"cache misses", {std::to_string(a.misses), std::to_string(b.misses)}},
                            {"misses suppressed",
                             {std::to_string(a.misses - a.db_queries),
                              std::to_string(b.misses - b.db_queries)}},
                            {"p50 latency", {fmt_latency(a.p50_ms), fmt_latency(b.p50_ms)}},
                            {"p99 latency", {fmt_latency(a.p99_ms), fmt_latency(b.p99_ms)}},
                            {"wall time", {fmt("%.2f s", a.wall_s), fmt("%.2f s", b.wall_s)}},
                        });
            if (b.db_queries > 0)
                std::printf(
                    "\n   singleflight sent %.1fx fewer queries to the database: here most misses "
                    "are for\n"
                    "   different rows, and every row still has to be loaded once per TTL.\n",
                    double(a.db_queries) / double(b.db_queries));
        }
    }

    // Last: it forks, and the threads of the parts above have all been
    // joined by now.
    if (o.part[3]) {
        const ProcOptions &p = o.procs;
        if (!o.json) {
            std::printf(
                "\n3. Across processes: %d worker processes x %d threads serve %d hot keys from a "
                "cache;\n"
                "   every key expires in every cache at once, %d times, and a barrier releases "
                "all\n"
                "   %d threads together each time.  %s\n",
                p.processes, p.threads, p.keys, p.expiries, p.processes * p.threads,
                p.zipf > 0 ? ("Each thread asks for " + std::to_string(2 * p.keys) +
                              " keys per expiry, drawn with Zipf s=" + fmt("%.2f.", p.zipf))
                                 .c_str()
                           : "Each thread asks for every key twice per expiry.");
            std::fflush(stdout);
        }
        ProcReport r = run_processes(p, path);
        if (o.json) add_json("processes", processes_json(p, r));
        else print_processes(p, r);
    }
    std::remove(path.c_str());
    if (o.json)
        std::printf("{\"threads\":%d,\"keys\":%d%s%s}\n", o.threads, o.keys,
                    json.empty() ? "" : ",", json.c_str());
    return 0;
}
