// stampede: a cache stampede on an embedded SQLite database, run once
// without singleflight and once with it.
//
// T worker threads serve M requests for Zipf-distributed keys through an
// in-memory cache whose entries expire after a TTL.  On a miss a worker loads
// the row from SQLite (plus an optional artificial latency, standing in for a
// remote database).  Every time a hot key expires, all the workers asking for
// it miss together and, without singleflight, all of them query the database
// for the same row.  With singleflight one of them does and the others share
// its result.
//
//   stampede [--threads 32] [--requests 20000] [--keys 200] [--latency-ms 2]
//            [--ttl-ms 20] [--zipf 1.1] [--db-conns 4] [--seed 1]
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
#include <memory>
#include <mutex>
#include <random>
#include <string>
#include <string_view>
#include <thread>
#include <unordered_map>
#include <vector>

#include <unistd.h>

namespace {

using Clock = std::chrono::steady_clock;

[[noreturn]] void die(const std::string &what) {
    std::fprintf(stderr, "stampede: %s\n", what.c_str());
    std::exit(2);
}

struct Options {
    int threads = 32;
    long requests = 20000;
    int keys = 200;
    double latency_ms = 2.0;
    double ttl_ms = 20.0;
    double zipf = 1.1;
    int db_conns = 4;
    unsigned seed = 1;
    bool progress = true;
    bool json = false;
};

void usage() {
    std::puts(
        "usage: stampede [options]\n"
        "  --threads N      worker threads (default 32)\n"
        "  --requests N     requests in each run (default 20000)\n"
        "  --keys N         rows in the table, requested with Zipf popularity (default 200)\n"
        "  --latency-ms X   extra latency added to every database query (default 2)\n"
        "  --ttl-ms X       how long a cached row stays fresh (default 20)\n"
        "  --zipf S         Zipf exponent; larger is more skewed (default 1.1)\n"
        "  --db-conns N     queries the database serves at once; the rest queue (default 4)\n"
        "  --seed N         request stream seed (default 1)\n"
        "  --no-progress    no progress bar\n"
        "  --json           print the results as one JSON object instead of a table");
}

Options parse(int argc, char **argv) {
    Options o;
    for (int i = 1; i < argc; ++i) {
        std::string_view a = argv[i];
        auto val = [&]() -> const char * {
            if (i + 1 >= argc) die("missing value for " + std::string(a));
            return argv[++i];
        };
        if (a == "--threads") o.threads = std::atoi(val());
        else if (a == "--requests") o.requests = std::atol(val());
        else if (a == "--keys") o.keys = std::atoi(val());
        else if (a == "--latency-ms") o.latency_ms = std::atof(val());
        else if (a == "--ttl-ms") o.ttl_ms = std::atof(val());
        else if (a == "--zipf") o.zipf = std::atof(val());
        else if (a == "--db-conns") o.db_conns = std::atoi(val());
        else if (a == "--seed") o.seed = unsigned(std::atol(val()));
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
    if (o.threads < 1 || o.threads > 1024 || o.requests < 1 || o.keys < 1 || o.latency_ms < 0 ||
        o.ttl_ms < 0 || o.zipf <= 0 || o.db_conns < 1)
        die("option out of range (see --help)");
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

  private:
    struct Entry {
        std::string value;
        Clock::time_point expires;
    };
    struct alignas(64) Shard {
        std::mutex mu;
        std::unordered_map<std::string, Entry> map;
    };
    Shard &shard(const std::string &key) { return shards_[std::hash<std::string>()(key) % kShards]; }
    static constexpr std::size_t kShards = 64;
    Shard shards_[kShards];
};

// ------------------------------------------------------------------ the database

class Db {
  public:
    // One read-only connection per worker: SQLite connections are not meant
    // to be shared between threads doing concurrent queries.
    explicit Db(const std::string &path) {
        if (sqlite3_open_v2(path.c_str(), &db_, SQLITE_OPEN_READONLY | SQLITE_OPEN_NOMUTEX, nullptr) !=
            SQLITE_OK)
            die("cannot open the database: " + std::string(sqlite3_errmsg(db_)));
        if (sqlite3_prepare_v2(db_, "SELECT name, price, stock FROM items WHERE id = ?1", -1, &stmt_,
                               nullptr) != SQLITE_OK)
            die("cannot prepare the query: " + std::string(sqlite3_errmsg(db_)));
    }
    ~Db() {
        sqlite3_finalize(stmt_);
        sqlite3_close(db_);
    }
    Db(const Db &) = delete;
    Db &operator=(const Db &) = delete;

    std::string load(int id) {
        sqlite3_reset(stmt_);
        sqlite3_bind_int(stmt_, 1, id);
        std::string row;
        if (sqlite3_step(stmt_) == SQLITE_ROW) {
            row = reinterpret_cast<const char *>(sqlite3_column_text(stmt_, 0));
            row += " $" + std::to_string(sqlite3_column_double(stmt_, 1));
            row += " x" + std::to_string(sqlite3_column_int(stmt_, 2));
        }
        return row;
    }

  private:
    sqlite3 *db_ = nullptr;
    sqlite3_stmt *stmt_ = nullptr;
};

void create_db(const std::string &path, int rows) {
    sqlite3 *db = nullptr;
    if (sqlite3_open(path.c_str(), &db) != SQLITE_OK) die("cannot create the database");
    char *err = nullptr;
    auto exec = [&](const char *sql) {
        if (sqlite3_exec(db, sql, nullptr, nullptr, &err) != SQLITE_OK) die(err ? err : sql);
    };
    exec("PRAGMA journal_mode=OFF; PRAGMA synchronous=OFF;"
         "CREATE TABLE items(id INTEGER PRIMARY KEY, name TEXT NOT NULL, price REAL, stock INTEGER);"
         "BEGIN;");
    sqlite3_stmt *ins = nullptr;
    sqlite3_prepare_v2(db, "INSERT INTO items VALUES(?1, ?2, ?3, ?4)", -1, &ins, nullptr);
    for (int i = 0; i < rows; ++i) {
        std::string name = "item-" + std::to_string(i);
        sqlite3_bind_int(ins, 1, i);
        sqlite3_bind_text(ins, 2, name.c_str(), -1, SQLITE_TRANSIENT);
        sqlite3_bind_double(ins, 3, 1.0 + (i % 997) / 10.0);
        sqlite3_bind_int(ins, 4, (i * 7919) % 1000);
        if (sqlite3_step(ins) != SQLITE_DONE) die("insert failed");
        sqlite3_reset(ins);
    }
    sqlite3_finalize(ins);
    exec("COMMIT;");
    sqlite3_close(db);
}

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

// ------------------------------------------------------------------ one run

struct RunStats {
    long requests = 0;
    long db_queries = 0;
    long misses = 0;
    double p50_ms = 0, p99_ms = 0, wall_s = 0;
};

struct Shared {
    const Options *o;
    const std::vector<int> *stream;
    std::string db_path;
    Cache cache;
    Gate gate;
    explicit Shared(int conns) : gate(conns) {}
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
            std::this_thread::sleep_for(std::chrono::duration<double, std::milli>(sh->o->latency_ms));
        sh->gate.leave();
        auto ttl = std::chrono::duration_cast<Clock::duration>(
            std::chrono::duration<double, std::milli>(sh->o->ttl_ms));
        sh->cache.put(key, row, Clock::now() + ttl);
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
        if (!f->w->sh->cache.get(*f->key, Clock::now(), &row)) row = f->w->load_and_fill(f->id, *f->key);
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

    void run() {
        const auto &stream = *sh->stream;
        long n = long(stream.size());
        std::size_t checksum = 0;
        for (;;) {
            long i = sh->next.fetch_add(1, std::memory_order_relaxed);
            if (i >= n) break;
            auto t0 = Clock::now();
            checksum += serve(stream[std::size_t(i)]).size();
            latency_ms.push_back(std::chrono::duration<float, std::milli>(Clock::now() - t0).count());
            sh->done.fetch_add(1, std::memory_order_relaxed);
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

RunStats run(const Options &o, const std::vector<int> &stream, const std::string &db_path,
             bool with_sf, bool progress) {
    Shared sh(o.db_conns);
    sh.o = &o;
    sh.stream = &stream;
    sh.db_path = db_path;
    if (with_sf) {
        int rc = sf_group_new(&sh.group, nullptr);
        if (rc != SF_OK) die(std::string("sf_group_new: ") + sf_strerror(rc));
    }
    std::vector<std::unique_ptr<Worker>> workers;
    for (int t = 0; t < o.threads; ++t) workers.push_back(std::make_unique<Worker>(&sh));

    const char *label = with_sf ? "with singleflight" : "without singleflight";
    auto t0 = Clock::now();
    std::vector<std::thread> threads;
    for (auto &w : workers) threads.emplace_back([&w] { w->run(); });
    if (progress) {
        while (sh.done.load() < long(stream.size())) {
            draw_bar(label, sh.done.load(), long(stream.size()),
                     std::chrono::duration<double>(Clock::now() - t0).count());
            std::this_thread::sleep_for(std::chrono::milliseconds(100));
        }
    }
    for (auto &th : threads) th.join();
    double wall = std::chrono::duration<double>(Clock::now() - t0).count();
    if (progress) {
        draw_bar(label, long(stream.size()), long(stream.size()), wall);
        std::fputc('\n', stderr);
    }

    std::vector<float> lat;
    for (auto &w : workers) lat.insert(lat.end(), w->latency_ms.begin(), w->latency_ms.end());
    std::sort(lat.begin(), lat.end());
    auto pct = [&](double p) { return lat.empty() ? 0.0 : double(lat[std::size_t(p * double(lat.size() - 1))]); };

    RunStats s;
    s.requests = long(lat.size());
    s.db_queries = sh.db_queries.load();
    s.misses = sh.misses.load();
    s.p50_ms = pct(0.50);
    s.p99_ms = pct(0.99);
    s.wall_s = wall;
    if (sh.group) {
        workers.clear();
        int rc = sf_group_free(sh.group);
        if (rc != SF_OK) die(std::string("sf_group_free: ") + sf_strerror(rc));
    }
    return s;
}

std::string fmt(const char *f, double v) {
    char b[64];
    std::snprintf(b, sizeof b, f, v);
    return b;
}

// A cache hit takes microseconds and a query milliseconds: one unit would
// print one of them as 0.000.
std::string fmt_latency(double ms) {
    return ms < 1.0 ? fmt("%.1f us", ms * 1000.0) : fmt("%.2f ms", ms);
}

}  // namespace

int main(int argc, char **argv) {
    Options o = parse(argc, argv);
    if (sf_version_number() != SF_VERSION_NUMBER) die("libsingleflight header and library versions differ");
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
    for (int i = 0; i < o.keys; ++i) cdf[std::size_t(i)] = (sum += 1.0 / std::pow(double(i + 1), o.zipf));
    std::mt19937_64 rng(o.seed);
    std::uniform_real_distribution<double> u(0.0, sum);
    std::vector<int> stream(std::size_t(o.requests));
    for (auto &k : stream)
        k = int(std::min<std::ptrdiff_t>(std::upper_bound(cdf.begin(), cdf.end(), u(rng)) - cdf.begin(),
                                         o.keys - 1));

    if (!o.json) {
        std::printf("cache stampede on SQLite: %d threads, %ld requests, %d keys (Zipf s=%.2f), "
                    "TTL %.0f ms, +%.1f ms per query, %d database connections\n",
                    o.threads, o.requests, o.keys, o.zipf, o.ttl_ms, o.latency_ms, o.db_conns);
        std::fflush(stdout);
    }
    RunStats a = run(o, stream, path, false, progress);
    RunStats b = run(o, stream, path, true, progress);
    std::remove(path.c_str());

    if (o.json) {
        auto obj = [](const RunStats &s) {
            char x[256];
            std::snprintf(x, sizeof x,
                          "{\"requests\":%ld,\"db_queries\":%ld,\"cache_misses\":%ld,\"suppressed\":%ld,"
                          "\"p50_ms\":%.4f,\"p99_ms\":%.4f,\"wall_s\":%.4f}",
                          s.requests, s.db_queries, s.misses, s.misses - s.db_queries, s.p50_ms, s.p99_ms,
                          s.wall_s);
            return std::string(x);
        };
        std::printf("{\"threads\":%d,\"keys\":%d,\"without\":%s,\"with\":%s}\n", o.threads, o.keys,
                    obj(a).c_str(), obj(b).c_str());
        return 0;
    }

    struct Row {
        const char *name;
        std::string x, y;
    };
    Row rows[] = {
        {"requests", std::to_string(a.requests), std::to_string(b.requests)},
        {"database queries", std::to_string(a.db_queries), std::to_string(b.db_queries)},
        {"cache misses", std::to_string(a.misses), std::to_string(b.misses)},
        {"misses suppressed", std::to_string(a.misses - a.db_queries), std::to_string(b.misses - b.db_queries)},
        {"p50 latency", fmt_latency(a.p50_ms), fmt_latency(b.p50_ms)},
        {"p99 latency", fmt_latency(a.p99_ms), fmt_latency(b.p99_ms)},
        {"wall time", fmt("%.2f s", a.wall_s), fmt("%.2f s", b.wall_s)},
    };
    std::printf("\n  %-20s %22s %22s\n", "", "without singleflight", "with singleflight");
    for (auto &r : rows) std::printf("  %-20s %22s %22s\n", r.name, r.x.c_str(), r.y.c_str());
    if (b.db_queries > 0)
        std::printf("\n  singleflight sent %.1fx fewer queries to the database.\n",
                    double(a.db_queries) / double(b.db_queries));
    return 0;
}
