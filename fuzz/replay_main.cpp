// Replays fuzz inputs without libFuzzer: every file named on the command line,
// or every file in a directory named there, goes through the fuzz target once.
// This lets the corpus and the regression inputs run in any build (gcc,
// ASan+UBSan, TSan), not only in the clang fuzzing build.

#include <dirent.h>
#include <sys/stat.h>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <fstream>
#include <iterator>
#include <string>
#include <vector>

extern "C" int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

// Directories may hold a README.md next to the inputs.
static bool ends_with(const std::string &s, const std::string &suffix) {
    return s.size() >= suffix.size() && s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

static int replay_file(const std::string &path) {
    std::ifstream f(path, std::ios::binary);
    if (!f) {
        std::fprintf(stderr, "cannot read %s\n", path.c_str());
        return 1;
    }
    std::vector<char> buf((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
    LLVMFuzzerTestOneInput(reinterpret_cast<const uint8_t *>(buf.data()), buf.size());
    return 0;
}

int main(int argc, char **argv) {
    int files = 0, errors = 0;
    for (int i = 1; i < argc; i++) {
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
                if (e->d_name[0] != '.' && !ends_with(e->d_name, ".md"))
                    names.push_back(e->d_name);
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
    std::printf("replayed %d inputs\n", files);
    // An empty replay proves nothing: that is a failure too.
    return (errors || files == 0) ? 1 : 0;
}
