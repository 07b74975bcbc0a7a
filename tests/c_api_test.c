/*
 * The C API from plain C: what a C user writes, checked behaviour by
 * behaviour.  Also the suite scripts/test.sh runs under valgrind, so every
 * test frees what it takes.
 */
#define _GNU_SOURCE
#include <poll.h>
#include <pthread.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "singleflight.h"

static int failures, checks;

#define CHECK(cond)                                                                                \
    do {                                                                                           \
        ++checks;                                                                                  \
        if (!(cond)) {                                                                             \
            ++failures;                                                                            \
            fprintf(stderr, "%s:%d: %s: check failed: %s\n", __FILE__, __LINE__, __func__, #cond); \
        }                                                                                          \
    } while (0)

#define CHECK_RC(expr, want) CHECK((expr) == (want))

static sf_group_stats stats(sf_group *g) {
    sf_group_stats st;
    memset(&st, 0, sizeof st);
    st.version = SF_GROUP_STATS_VERSION;
    sf_group_stats_get(g, &st);
    return st;
}

static int destroyed;
static pthread_mutex_t destroyed_mu = PTHREAD_MUTEX_INITIALIZER;
static void free_counted(void *p) {
    pthread_mutex_lock(&destroyed_mu);
    destroyed++;
    pthread_mutex_unlock(&destroyed_mu);
    free(p);
}
static int destroyed_now(void) {
    int n;
    pthread_mutex_lock(&destroyed_mu);
    n = destroyed;
    pthread_mutex_unlock(&destroyed_mu);
    return n;
}

/* ---- many threads, one key ------------------------------------------- */

#define N 16
struct crowd {
    sf_group *g;
    pthread_barrier_t start;
    int executions;
    int rc[N], shared[N];
    void *value[N];
};
struct crowd_arg {
    struct crowd *c;
    int i;
};

static int crowd_fn(sf_call *call, void *payload) {
    struct crowd *c = payload;
    char *v = malloc(16);
    c->executions++; /* only the leader runs: no race if suppression works */
    strcpy(v, "shared value");
    while (stats(c->g).followers < N - 1) sched_yield();
    sf_call_set_value(call, v, free_counted);
    return 0;
}

static void *crowd_thread(void *p) {
    struct crowd_arg *a = p;
    sf_result *r = NULL;
    pthread_barrier_wait(&a->c->start);
    a->c->rc[a->i] = sf_group_do(a->c->g, "hot", 3, crowd_fn, a->c, &r, &a->c->shared[a->i]);
    a->c->value[a->i] = sf_result_value(r);
    sf_result_release(r);
    return NULL;
}

static void test_crowd_runs_once(void) {
    struct crowd c;
    struct crowd_arg args[N];
    pthread_t t[N];
    sf_group_stats st;
    int i, before = destroyed_now();
    memset(&c, 0, sizeof c);
    CHECK_RC(sf_group_new(&c.g, NULL), SF_OK);
    pthread_barrier_init(&c.start, NULL, N);
    for (i = 0; i < N; i++) {
        args[i].c = &c;
        args[i].i = i;
        pthread_create(&t[i], NULL, crowd_thread, &args[i]);
    }
    for (i = 0; i < N; i++) pthread_join(t[i], NULL);
    pthread_barrier_destroy(&c.start);
    CHECK(c.executions == 1);
    for (i = 0; i < N; i++) {
        CHECK(c.rc[i] == SF_OK);
        CHECK(c.value[i] == c.value[0]);
        CHECK(c.shared[i] == 1);
    }
    CHECK(destroyed_now() == before + 1);
    st = stats(c.g);
    CHECK(st.calls == N && st.leaders == 1 && st.followers == N - 1 && st.in_flight == 0);
    CHECK_RC(sf_group_free(c.g), SF_OK);
}

/* ---- errors, panics and exits ---------------------------------------- */

static int fail_fn(sf_call *call, void *payload) {
    (void)call;
    return *(int *)payload;
}

static void test_user_error_is_status_ok(void) {
    sf_group *g;
    sf_result *r;
    int err = 404, shared = -1;
    sf_group_new(&g, NULL);
    CHECK_RC(sf_group_do(g, "k", 1, fail_fn, &err, &r, &shared), SF_OK);
    CHECK(sf_result_error(r) == 404);
    CHECK(shared == 0);
    CHECK(sf_result_value(r) == NULL);
    sf_result_release(r);
    sf_group_free(g);
}

static int panic_fn(sf_call *call, void *payload) {
    (void)payload;
    sf_call_set_value(call, malloc(8), free_counted);
    CHECK_RC(sf_call_panic(call, "C code cannot throw"), SF_OK);
    return 0;
}

static void test_c_panic(void) {
    sf_group *g;
    sf_result *r;
    int before = destroyed_now();
    sf_group_new(&g, NULL);
    CHECK_RC(sf_group_do(g, "k", 1, panic_fn, NULL, &r, NULL), SF_EPANIC);
    CHECK(r != NULL && strcmp(sf_result_panic_message(r), "C code cannot throw") == 0);
    sf_result_release(r);
    CHECK(destroyed_now() == before + 1);
    CHECK(stats(g).panics == 1);
    sf_group_free(g);
}

struct exiter {
    sf_group *g;
    int returned;
};

static int exit_fn(sf_call *call, void *payload) {
    struct exiter *e = payload;
    (void)call;
    while (stats(e->g).followers < 1) sched_yield();
    pthread_exit(NULL);
    return 0;
}

static void *exit_leader(void *p) {
    struct exiter *e = p;
    sf_group_do(e->g, "x", 1, exit_fn, e, NULL, NULL);
    e->returned = 1;
    return NULL;
}

static int never_fn(sf_call *call, void *payload) {
    (void)call;
    (void)payload;
    return 99;
}

static void test_pthread_exit_is_goexit(void) {
    struct exiter e;
    pthread_t t;
    sf_result *r = NULL;
    e.returned = 0;
    sf_group_new(&e.g, NULL);
    pthread_create(&t, NULL, exit_leader, &e);
    while (stats(e.g).leaders < 1) sched_yield();
    CHECK_RC(sf_group_do(e.g, "x", 1, never_fn, NULL, &r, NULL), SF_EGOEXIT);
    sf_result_release(r);
    pthread_join(t, NULL);
    CHECK(!e.returned);
    CHECK(stats(e.g).goexits == 1 && stats(e.g).in_flight == 0);
    CHECK_RC(sf_group_do(e.g, "x", 1, never_fn, NULL, &r, NULL), SF_OK);
    CHECK(sf_result_error(r) == 99);
    sf_result_release(r);
    CHECK_RC(sf_group_free(e.g), SF_OK);
}

/* ---- two-phase --------------------------------------------------------- */

static void test_two_phase_roundtrip(void) {
    sf_group *g;
    sf_call *l, *f;
    sf_result *r;
    int shared = -1, fd;
    char *v = malloc(4);
    struct pollfd p;
    sf_group_new(&g, NULL);
    CHECK_RC(sf_group_begin(g, "tp", 2, &l), SF_LEADER);
    CHECK_RC(sf_group_begin(g, "tp", 2, &f), SF_FOLLOWER);
    fd = sf_call_fd(f);
    CHECK(fd >= 0);
    p.fd = fd;
    p.events = POLLIN;
    CHECK(poll(&p, 1, 0) == 0);
    CHECK_RC(sf_call_wait(f, 1000, &r, NULL), SF_ETIMEDOUT);
    CHECK(r == NULL);
    strcpy(v, "tp!");
    sf_call_set_value(l, v, free_counted);
    CHECK_RC(sf_call_finish(l, 0), SF_OK);
    CHECK_RC(sf_call_finish(l, 0), SF_ESTATE);
    CHECK(poll(&p, 1, 1000) == 1);
    CHECK_RC(sf_call_wait(f, -1, &r, &shared), SF_OK);
    CHECK(strcmp(sf_result_value(r), "tp!") == 0 && shared == 1);
    sf_result_release(r);
    sf_call_release(f);
    CHECK_RC(sf_group_free(g), SF_EBUSY);
    sf_call_release(l);
    CHECK(stats(g).timeouts == 1);
    CHECK_RC(sf_group_free(g), SF_OK);
}

static void test_release_unfinished_is_goexit(void) {
    sf_group *g;
    sf_call *l, *f;
    sf_group_new(&g, NULL);
    CHECK_RC(sf_group_begin(g, "k", 1, &l), SF_LEADER);
    CHECK_RC(sf_group_begin(g, "k", 1, &f), SF_FOLLOWER);
    sf_call_release(l);
    CHECK_RC(sf_call_wait(f, -1, NULL, NULL), SF_EGOEXIT);
    sf_call_release(f);
    CHECK_RC(sf_group_free(g), SF_OK);
}

static void test_forget(void) {
    sf_group *g;
    sf_call *a, *b;
    sf_group_new(&g, NULL);
    CHECK_RC(sf_group_begin(g, "k", 1, &a), SF_LEADER);
    CHECK(sf_group_forget(g, "k", 1) == 1);
    CHECK_RC(sf_group_begin(g, "k", 1, &b), SF_LEADER);
    CHECK(sf_group_forget_unshared(g, "k", 1) == 1);
    CHECK(sf_group_forget_unshared(g, "k", 1) == 0);
    sf_call_finish(a, 0);
    sf_call_finish(b, 0);
    sf_call_release(a);
    sf_call_release(b);
    CHECK(stats(g).forgets == 2);
    CHECK_RC(sf_group_free(g), SF_OK);
}

/* ---- do_async on the built-in pool ------------------------------------ */

struct async_state {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int done, ok, executions;
};

static int async_fn(sf_call *call, void *payload) {
    struct async_state *s = payload;
    pthread_mutex_lock(&s->mu);
    s->executions++;
    pthread_mutex_unlock(&s->mu);
    sf_call_set_value(call, strdup("async"), free_counted);
    return 0;
}

static void async_done(int status, sf_result *r, int shared, void *payload) {
    struct async_state *s = payload;
    (void)shared;
    pthread_mutex_lock(&s->mu);
    if (status == SF_OK && strcmp(sf_result_value(r), "async") == 0) s->ok++;
    s->done++;
    pthread_cond_broadcast(&s->cv);
    pthread_mutex_unlock(&s->mu);
}

static void test_do_async(void) {
    sf_group *g;
    struct async_state s;
    int i;
    memset(&s, 0, sizeof s);
    pthread_mutex_init(&s.mu, NULL);
    pthread_cond_init(&s.cv, NULL);
    sf_group_new(&g, NULL);
    for (i = 0; i < 4; i++)
        CHECK_RC(sf_group_do_async(g, "a", 1, async_fn, &s, async_done, &s), SF_OK);
    pthread_mutex_lock(&s.mu);
    while (s.done < 4) pthread_cond_wait(&s.cv, &s.mu);
    pthread_mutex_unlock(&s.mu);
    CHECK(s.ok == 4);
    CHECK(s.executions >= 1 && s.executions <= 4);
    CHECK(stats(g).leaders == (sf_u64)s.executions);
    CHECK_RC(sf_group_free(g), SF_OK); /* joins the pool: nothing leaks */
    pthread_cond_destroy(&s.cv);
    pthread_mutex_destroy(&s.mu);
}

/* ---- bad input, keys, versions ---------------------------------------- */

static void test_bad_input(void) {
    sf_group *g = NULL;
    sf_group_options o;
    sf_call *c = NULL;
    sf_result *r = NULL;
    sf_group_stats st;
    CHECK_RC(sf_group_options_init(&o, SF_GROUP_OPTIONS_VERSION), SF_OK);
    o.version = SF_GROUP_OPTIONS_VERSION + 1;
    CHECK_RC(sf_group_new(&g, &o), SF_EINVAL);
    o.version = 0;
    CHECK_RC(sf_group_new(&g, &o), SF_EINVAL);
    CHECK_RC(sf_group_new(&g, NULL), SF_OK);
    CHECK_RC(sf_group_do(g, NULL, 5, never_fn, NULL, &r, NULL), SF_EINVAL);
    CHECK_RC(sf_group_do(g, "k", 1, NULL, NULL, &r, NULL), SF_EINVAL);
    CHECK_RC(sf_group_begin(NULL, "k", 1, &c), SF_EINVAL);
    CHECK_RC(sf_call_finish(NULL, 0), SF_EINVAL);
    CHECK_RC(sf_call_wait(NULL, -1, &r, NULL), SF_EINVAL);
    CHECK(r == NULL);
    st.version = 0;
    CHECK_RC(sf_group_stats_get(g, &st), SF_EINVAL);
    CHECK_RC(sf_group_free(NULL), SF_EINVAL);
    CHECK(strcmp(sf_err_name(SF_ETIMEDOUT), "SF_ETIMEDOUT") == 0);
    CHECK(sf_strerror(42) != NULL);
    CHECK(sf_version_number() == SF_VERSION_NUMBER);
    CHECK_RC(sf_group_free(g), SF_OK);
}

static void test_binary_keys(void) {
    sf_group *g;
    sf_call *a, *b, *c;
    static const char k1[] = {0, 1, 0}, k2[] = {0, 1, 1};
    char *big = malloc(3000);
    memset(big, 0xff, 3000);
    sf_group_new(&g, NULL);
    CHECK_RC(sf_group_begin(g, k1, 3, &a), SF_LEADER);
    CHECK_RC(sf_group_begin(g, k2, 3, &b), SF_LEADER);
    CHECK_RC(sf_group_begin(g, big, 3000, &c), SF_LEADER);
    sf_call_finish(a, 0);
    sf_call_finish(b, 0);
    sf_call_finish(c, 0);
    sf_call_release(a);
    sf_call_release(b);
    sf_call_release(c);
    free(big);
    CHECK_RC(sf_group_free(g), SF_OK);
}

int main(void) {
    test_crowd_runs_once();
    test_user_error_is_status_ok();
    test_c_panic();
    test_pthread_exit_is_goexit();
    test_two_phase_roundtrip();
    test_release_unfinished_is_goexit();
    test_forget();
    test_do_async();
    test_bad_input();
    test_binary_keys();
    printf("c_api_test: %d checks, %d failed\n", checks, failures);
    return failures ? 1 : 0;
}
