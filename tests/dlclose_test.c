/*
 * Language runtimes load the library with dlopen and may unload it (a Lua
 * state closing, a JVM class loader going away) while the threads that used
 * it live on.  Nothing of the library may run after the unload: each thread
 * here loads it, makes a call (which sets up per-thread caches), unloads it
 * and only then exits.  A per-thread cleanup left behind in unmapped code
 * crashes this test.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <pthread.h>
#include <stdio.h>

#include "singleflight.h"

static const char *path;
static int failures;
static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;

static int fn(sf_call *call, void *payload) {
    (void)call;
    (void)payload;
    return 7;
}

static void fail(const char *what) {
    pthread_mutex_lock(&mu);
    failures++;
    fprintf(stderr, "dlclose_test: %s\n", what);
    pthread_mutex_unlock(&mu);
}

typedef int (*new_t)(sf_group **, const sf_group_options *);
typedef int (*do_t)(sf_group *, const void *, size_t, sf_fn, void *, sf_result **, int *);
typedef int (*free_t)(sf_group *);

static void *worker(void *arg) {
    void *h = dlopen(path, RTLD_NOW | RTLD_LOCAL);
    sf_group *g;
    int i, shared;
    (void)arg;
    if (!h) {
        fail(dlerror());
        return NULL;
    }
    {
        new_t group_new = (new_t)dlsym(h, "sf_group_new");
        do_t group_do = (do_t)dlsym(h, "sf_group_do");
        free_t group_free = (free_t)dlsym(h, "sf_group_free");
        if (!group_new || !group_do || !group_free || group_new(&g, NULL) != SF_OK) {
            fail("cannot use the loaded library");
        } else {
            for (i = 0; i < 100; i++)
                if (group_do(g, "k", 1, fn, NULL, NULL, &shared) != SF_OK) fail("sf_group_do");
            if (group_free(g) != SF_OK) fail("sf_group_free");
        }
    }
    dlclose(h);
    return NULL; /* thread exit: nothing of the library may run now */
}

int main(int argc, char **argv) {
    pthread_t t[4];
    int i, round;
    if (argc != 2) return 2;
    path = argv[1];
    for (round = 0; round < 5; round++) {
        for (i = 0; i < 4; i++) pthread_create(&t[i], NULL, worker, NULL);
        for (i = 0; i < 4; i++) pthread_join(t[i], NULL);
    }
    printf("dlclose_test: 20 threads loaded, used and unloaded the library, %d failures\n",
           failures);
    return failures != 0;
}
