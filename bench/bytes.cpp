// bytes: what a value costs as bytes (sf_call_set_bytes, copied by the
// library into a recycled block) against the pointer path (fn mallocs a
// copy, sf_call_set_value with free as destroy), per uncontended
// sf_group_do that sets it and reads it back, for value sizes from 8 bytes
// to 4 KiB.  The two run interleaved, repeat by repeat; medians.
//
//   bytes [--reps R] [--calls N]
#include <singleflight.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <vector>

namespace {

struct Job {
    const unsigned char *src;
    size_t len;
};

int set_pointer(sf_call *call, void *p) {
    auto *j = static_cast<Job *>(p);
    void *copy = std::malloc(j->len);
    std::memcpy(copy, j->src, j->len);
    sf_call_set_value(call, copy, std::free);
    return 0;
}

int set_bytes(sf_call *call, void *p) {
    auto *j = static_cast<Job *>(p);
    return sf_call_set_bytes(call, j->src, j->len) == SF_OK ? 0 : 1;
}

volatile unsigned char g_sink;

double run(sf_group *g, sf_fn fn, bool bytes, Job &job, long calls) {
    const auto t0 = std::chrono::steady_clock::now();
    for (long i = 0; i < calls; ++i) {
        sf_result *r = nullptr;
        if (sf_group_do(g, "key:0001", 8, fn, &job, &r, nullptr) != SF_OK) std::abort();
        size_t n = job.len;
        const void *v = bytes ? sf_result_bytes(r, &n) : sf_result_value(r);
        g_sink = static_cast<const unsigned char *>(v)[n - 1];  // read it, as a caller would
        sf_result_release(r);
    }
    return std::chrono::duration<double, std::nano>(std::chrono::steady_clock::now() - t0).count() /
           double(calls);
}

}  // namespace

int main(int argc, char **argv) {
    int reps = 9;
    long calls = 200000;
    for (int i = 1; i + 1 < argc; i += 2) {
        if (!std::strcmp(argv[i], "--reps")) reps = std::atoi(argv[i + 1]);
        else if (!std::strcmp(argv[i], "--calls")) calls = std::atol(argv[i + 1]);
    }
    sf_group *g = nullptr;
    if (sf_group_new(&g, nullptr) != SF_OK) return 2;
    std::vector<unsigned char> src(4096, 0x5a);
    std::printf(
        "| value bytes | pointer path (malloc + set_value + free), ns | bytes path (set_bytes), ns "
        "| bytes / pointer |\n");
    std::printf("|---:|---:|---:|---:|\n");
    for (size_t len : {8, 32, 64, 120, 256, 1024, 4096}) {
        Job job{src.data(), len};
        std::vector<double> p, b;
        run(g, set_pointer, false, job, calls / 10);  // warm both
        run(g, set_bytes, true, job, calls / 10);
        for (int r = 0; r < reps; ++r) {
            if (r % 2) {
                p.push_back(run(g, set_pointer, false, job, calls));
                b.push_back(run(g, set_bytes, true, job, calls));
            } else {
                b.push_back(run(g, set_bytes, true, job, calls));
                p.push_back(run(g, set_pointer, false, job, calls));
            }
        }
        std::sort(p.begin(), p.end());
        std::sort(b.begin(), b.end());
        const double pm = p[p.size() / 2], bm = b[b.size() / 2];
        std::printf("| %zu | %.1f | %.1f | %.2fx |\n", len, pm, bm, bm / pm);
    }
    sf_group_free(g);
    return 0;
}
