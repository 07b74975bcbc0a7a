/*
 * callcount N [two-phase]: N uncontended sf_group_do calls (or two-phase
 * begin + sf_call_finish_unshared calls) on 1024 rotating 8-byte keys, the
 * trivial fn of the benchmark matrix (it stores a value).  Run under
 * callgrind twice, with N and 2N: the difference divided by N is the
 * instruction count of one call, start-up and warm-up cancelled out
 * (bench/check-instructions.sh).
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "singleflight.h"

static int trivial(sf_call *call, void *payload) {
    (void)payload;
    sf_call_set_value(call, (void *)(uintptr_t)1, NULL);
    return 0;
}

int main(int argc, char **argv) {
    static char keys[1024][8];
    long n = argc > 1 ? atol(argv[1]) : 100000, i;
    int two_phase = argc > 2 && strcmp(argv[2], "two-phase") == 0;
    sf_group *g;
    uintptr_t sum = 0;
    for (i = 0; i < 1024; i++) {
        char buf[16];
        snprintf(buf, sizeof buf, "key:%04ld", i);
        memcpy(keys[i], buf, 8);
    }
    if (sf_group_new(&g, NULL) != SF_OK) return 2;
    for (i = -4096; i < n; i++) { /* the first 4096 warm the caches */
        const char *k = keys[i & 1023];
        if (two_phase) {
            sf_call *c;
            if (sf_group_begin(g, k, 8, &c) != SF_LEADER) return 3;
            if (sf_call_finish_unshared(c, 0) != 0) return 4;
            sum += 1;
        } else {
            sf_result *r;
            int shared;
            if (sf_group_do(g, k, 8, trivial, NULL, &r, &shared) != SF_OK) return 3;
            sum += (uintptr_t)sf_result_value(r);
            sf_result_release(r);
        }
    }
    if (sf_group_free(g) != SF_OK) return 5;
    return sum == (uintptr_t)(n + 4096) ? 0 : 6;
}
