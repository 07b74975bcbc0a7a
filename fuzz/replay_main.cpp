// Replays fuzz inputs without libFuzzer: every file named on the command line,
// or every file in a directory named there, goes through the fuzz target.
// This lets the corpus and the regression inputs run in any build (gcc,
// ASan+UBSan, TSan, valgrind), not only in the clang fuzzing build.
//
// Each input runs twice in a row, and both runs must make the same number of
// internal allocations.  The target resets the library's caches at the start
// of every input; if some state still leaked from one input into the next,
// an allocation-failure burst would land elsewhere the second time and a
// find would not reproduce on its own.  The count is a cheap fingerprint of
// the path taken (the target is single-threaded, so it is exact).

#include <dirent.h>
#include <sys/stat.h>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <fstream>
#include <iterator>
#include <string>
#include <vector>

#include "core/testing.hpp"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

// Directories may hold a README.md next to the inputs.
static bool ends_with(const std::string &s, const std::string &suffix) {
    return s.size() >= suffix.size() &&
           s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

// --threads-allocate: the target's library starts threads of its own (the
// shared group's helper), whose allocations interleave with the input's:
// the count is no fingerprint then, and is not compared.
static bool g_threads_allocate = false;

static int replay_file(const std::string &path) {
    std::ifstream f(path, std::ios::binary);
    if (!f) {
        std::fprintf(stderr, "cannot read %s\n", path.c_str());
        return 1;
    }
    std::vector<char> buf((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
    const auto *data = reinterpret_cast<const uint8_t *>(buf.data());
    unsigned long counts[2];
    for (unsigned long &n : counts) {
        unsigned long before = sf::testing::allocation_requests();
        LLVMFuzzerTestOneInput(data, buf.size());
        n = sf::testing::allocation_requests() - before;
    }
    if (!g_threads_allocate && counts[0] != counts[1]) {
        std::fprintf(stderr, "%s: not deterministic: %lu allocation requests, then %lu\n",
                     path.c_str(), counts[0], counts[1]);
        return 1;
    }
    return 0;
}

int main(int argc, char **argv) {
    int files = 0, errors = 0;
    for (int i = 1; i < argc; i++) {
        if (std::string(argv[i]) == "--threads-allocate") {
            g_threads_allocate = true;
            continue;
        }
        struct stat st;
        if (stat(argv[i], &st) != 0) {
            std::fprintf(stderr, "no such input: %s\n", argv[i]);
            errors++;
            continue;
        }
        if (S_ISDIR(st.st_mode)) {
            DIR *d = opendir(argv[i]);
            std::vector<std::string> names;
            while (dirent *e = d ? readdir(d) : nullptr)
                if (e->d_name[0] != '.' && !ends_with(e->d_name, ".md")) names.push_back(e->d_name);
            if (d) closedir(d);
            std::sort(names.begin(), names.end());
            for (const auto &n : names) {
                errors += replay_file(std::string(argv[i]) + "/" + n);
                files++;
            }
        } else {
            errors += replay_file(argv[i]);
            files++;
        }
    }
    std::printf("replayed %d inputs, each twice%s\n", files,
                g_threads_allocate ? "" : " with the same allocations");
    // An empty replay proves nothing: that is a failure too.
    return (errors || files == 0) ? 1 : 0;
}
