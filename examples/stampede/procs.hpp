// Part 3 of the stampede demo: the stampede across worker processes, the way
// nginx, gunicorn or PHP-FPM run, without singleflight, with a group per
// process and with one group shared by every process of the host.
#pragma once

#include <string>

namespace stampede {

struct ProcOptions {
    int processes = 8;              // worker processes, forked by the demo
    int threads = 4;                // threads in each worker process
    int keys = 4;                   // hot keys, ids 0..keys-1 of the table
    int expiries = 20;              // times every hot key expires
    double latency_ms = 2.0;        // added to every database query
    int db_conns = 4;               // queries the database serves at once
    bool open_before_fork = false;  // the shared group: opened by the parent
                                    // before fork, or by each worker after
    // The Redis tier (a fourth way, when the demo is built with it): the
    // server every worker process, standing in for a host, talks to.
    // Empty: the way is not run.
    std::string redis_host;
    int redis_port = 6379;
    // > 0: in each expiry, each thread's 2 x keys requests are drawn from a
    // Zipf distribution of this exponent over the hot keys (seeded with
    // seed, the process and the thread: the same stream for every way)
    // instead of every key twice; a key nobody asked for in an expiry is
    // not counted.  0: every key twice.
    double zipf = 0;
    unsigned seed = 1;
};

// One run's figures.  A key x expiry pair is one hot key during one expiry.
struct ProcRun {
    long requests = 0;          // requests served (every one is timed)
    long db_queries = 0;        // queries sent to the database
    long pairs = 0;             // key x expiry pairs requested (expired keys)
    long fewest = 0;            // fewest queries of one requested pair
    long most = 0;              // most queries of one requested pair
    double per_key_expiry = 0;  // db_queries / pairs
    double p50_ms = 0, p99_ms = 0, wall_s = 0;
};

struct ProcReport {
    ProcRun none, per_process, shared;
    ProcRun redis;  // when o.redis_host is set
    bool ran_redis = false;
    std::string segment;        // the shared group's name, unique to the run
    bool segment_left = false;  // its segment was still in /dev/shm after
};

// What is out of range in o ("" when nothing is): at most 63 processes (a
// shared group admits 64 attachments, and the parent may hold one), 64
// threads each and 64 hot keys.
std::string proc_options_error(const ProcOptions &o);

// Whether this build has the Redis tier (libsingleflight-redis).
bool have_redis();

// Runs the three ways (four with o.redis_host) one after the other on the database at db_path (which
// must have rows 0..o.keys-1) and returns their figures; o must be in range.  Forks the worker
// processes and waits for them; exits the program with status 2 when one of
// them fails.  Call it with no other thread running in this process: fork
// copies only the calling thread.
ProcReport run_processes(const ProcOptions &o, const std::string &db_path);

// The report as a table with a column per way, and an explanation.
void print_processes(const ProcOptions &o, const ProcReport &r);

// The report as one JSON object.
std::string processes_json(const ProcOptions &o, const ProcReport &r);

}  // namespace stampede
