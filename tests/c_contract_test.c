/*
 * The header's promises under hostile use, from plain C: pending thread
 * cancellation at every place where the library itself could reach a
 * cancellation point, cancelled pool workers, descriptors given back at once,
 * timeouts and key lengths at the edges of their types, and waits that would
 * deadlock.
 *
 * Each scenario runs in a child process with a watchdog, so a scenario that
 * aborts (std::terminate) or hangs is reported as a failure of that scenario
 * and the rest still run.  Every scenario frees what it takes: the suite also
 * runs under valgrind, which checks the children too.
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "singleflight.h"

static int failures, scenarios;

/* AddressSanitizer cannot see the forced unwind of a cancellation and keeps
 * the unwound frames' redzones poisoned, which the thread's exit then trips
 * over; its hook for "this call may not return" unpoisons the stack. */
#if defined(__SANITIZE_ADDRESS__)
void __asan_handle_no_return(void);
#define TESTCANCEL() (__asan_handle_no_return(), pthread_testcancel())
#else
#define TESTCANCEL() pthread_testcancel()
#endif

#define REQUIRE(cond)                                                                              \
    do {                                                                                           \
        if (!(cond)) {                                                                             \
            fprintf(stderr, "%s:%d: %s: check failed: %s\n", __FILE__, __LINE__, __func__, #cond); \
            return 1;                                                                              \
        }                                                                                          \
    } while (0)

/* Runs fn in a child process; a non-zero return, a signal (an abort) or the
 * watchdog firing (a hang) fails the scenario. */
static void run_isolated(const char *name, int (*fn)(void), unsigned timeout_s) {
    pid_t pid;
    int st = 0;
    ++scenarios;
    fflush(NULL);
    pid = fork();
    if (pid == 0) {
        alarm(timeout_s);
        _exit(fn() == 0 ? 0 : 1);
    }
    if (pid < 0 || waitpid(pid, &st, 0) != pid) {
        ++failures;
        fprintf(stderr, "FAIL %s: could not run the child\n", name);
        return;
    }
    if (WIFEXITED(st) && WEXITSTATUS(st) == 0) {
        printf("ok   %s\n", name);
        return;
    }
    ++failures;
    if (WIFSIGNALED(st))
        fprintf(stderr, "FAIL %s: killed by signal %d (%s)%s\n", name, WTERMSIG(st),
                strsignal(WTERMSIG(st)), WTERMSIG(st) == SIGALRM ? ": it hung" : "");
    else fprintf(stderr, "FAIL %s: exit status %d\n", name, WEXITSTATUS(st));
}

/* ---- a thread that cancels itself, then drives the library ------------- */

/* Each mode puts a deferred cancellation request on the thread, then calls
 * the library at a point where the library itself reaches a cancellation
 * point (an eventfd write or close, a done callback that makes a system
 * call).  The library must neither act on the request (that would unwind
 * through noexcept code: std::terminate) nor lose it: the thread must still
 * be cancelled at its own next cancellation point. */
enum cancel_mode {
    FINISH_WRITES_FOLLOWER_FD,
    FD_ON_COMPLETED_FLIGHT,
    RELEASE_CLOSES_FD,
    FINISH_RUNS_DONE_WITH_SYSCALL
};

struct self_cancel {
    sf_group *g;
    enum cancel_mode mode;
    int rc, wait_rc, done_runs;
    int reached; /* 1: past the library calls; 2: past pthread_testcancel */
};

static void done_with_syscall(int status, sf_result *r, int shared, void *payload) {
    struct self_cancel *s = payload;
    int fd = open("/dev/null", O_WRONLY | O_CLOEXEC); /* open, write, close: */
    (void)status, (void)r, (void)shared;
    if (fd >= 0) { /* cancellation points */
        ssize_t n = write(fd, "x", 1);
        (void)n;
        close(fd);
    }
    s->done_runs++;
}

static void *self_cancel_thread(void *arg) {
    struct self_cancel *s = arg;
    sf_call *leader, *follower;
    int fd;
    if (sf_group_begin(s->g, "k", 1, &leader) != SF_LEADER) return NULL;
    if (sf_group_begin(s->g, "k", 1, &follower) != SF_FOLLOWER) return NULL;
    switch (s->mode) {
        case FINISH_WRITES_FOLLOWER_FD:
            fd = sf_call_fd(follower);
            if (fd < 0) return NULL;
            pthread_cancel(pthread_self());
            s->rc = sf_call_finish(leader, 0);
            break;
        case FD_ON_COMPLETED_FLIGHT:
            sf_call_finish(leader, 0);
            pthread_cancel(pthread_self());
            s->rc = sf_call_fd(follower) >= 0 ? SF_OK : SF_EBUSY;
            break;
        case RELEASE_CLOSES_FD:
            fd = sf_call_fd(follower);
            if (fd < 0) return NULL;
            sf_call_finish(leader, 0);
            pthread_cancel(pthread_self());
            s->rc = SF_OK;
            break;
        case FINISH_RUNS_DONE_WITH_SYSCALL:
            if (sf_call_on_done(follower, done_with_syscall, s) != SF_OK) return NULL;
            pthread_cancel(pthread_self());
            s->rc = sf_call_finish(leader, 0);
            break;
    }
    s->wait_rc = sf_call_wait(follower, 0, NULL, NULL);
    sf_call_release(leader);
    sf_call_release(follower); /* closes the eventfd, if any */
    s->reached = 1;
    TESTCANCEL(); /* the request is still pending: it acts here */
    s->reached = 2;
    return NULL;
}

static int self_cancel_scenario(enum cancel_mode mode) {
    struct self_cancel s;
    pthread_t t;
    void *ret = NULL;
    memset(&s, 0, sizeof s);
    s.mode = mode;
    s.rc = s.wait_rc = -100;
    REQUIRE(sf_group_new(&s.g, NULL) == SF_OK);
    REQUIRE(pthread_create(&t, NULL, self_cancel_thread, &s) == 0);
    REQUIRE(pthread_join(t, &ret) == 0);
    REQUIRE(ret == PTHREAD_CANCELED);
    REQUIRE(s.reached == 1);
    REQUIRE(s.rc == SF_OK);
    REQUIRE(s.wait_rc == SF_OK);
    if (mode == FINISH_RUNS_DONE_WITH_SYSCALL) REQUIRE(s.done_runs == 1);
    REQUIRE(sf_group_free(s.g) == SF_OK);
    return 0;
}

static int cancel_pending_at_finish_writing_fd(void) {
    return self_cancel_scenario(FINISH_WRITES_FOLLOWER_FD);
}
static int cancel_pending_at_fd_of_completed_flight(void) {
    return self_cancel_scenario(FD_ON_COMPLETED_FLIGHT);
}
static int cancel_pending_at_release_closing_fd(void) {
    return self_cancel_scenario(RELEASE_CLOSES_FD);
}
static int cancel_pending_at_done_callback_syscall(void) {
    return self_cancel_scenario(FINISH_RUNS_DONE_WITH_SYSCALL);
}

/* ---- an sf_group_do leader cancelled by another thread while fn runs ---- */

struct do_cancel {
    sf_group *g;
    pthread_t leader;
    sf_call *follower;
    int follower_fd;
    volatile sig_atomic_t cancel_sent; /* written by main, read by fn */
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int fn_started;
    int do_rc, reached;
};

static int computing_fn(sf_call *call, void *payload) {
    struct do_cancel *s = payload;
    (void)call;
    /* A two-phase follower with an eventfd: completion will write it. */
    if (sf_group_begin(s->g, "k", 1, &s->follower) != SF_FOLLOWER) return 1;
    s->follower_fd = sf_call_fd(s->follower);
    pthread_mutex_lock(&s->mu);
    s->fn_started = 1;
    pthread_cond_signal(&s->cv);
    pthread_mutex_unlock(&s->mu);
    /* Compute without any cancellation point until the request is pending. */
    while (!__atomic_load_n(&s->cancel_sent, __ATOMIC_ACQUIRE)) {}
    return 0;
}

static void *do_leader_thread(void *arg) {
    struct do_cancel *s = arg;
    s->do_rc = sf_group_do(s->g, "k", 1, computing_fn, s, NULL, NULL);
    s->reached = 1;
    TESTCANCEL();
    s->reached = 2;
    return NULL;
}

static int do_leader_cancelled_while_fn_computes(void) {
    struct do_cancel s;
    void *ret = NULL;
    memset(&s, 0, sizeof s);
    s.do_rc = -100;
    s.follower_fd = -1;
    pthread_mutex_init(&s.mu, NULL);
    pthread_cond_init(&s.cv, NULL);
    REQUIRE(sf_group_new(&s.g, NULL) == SF_OK);
    REQUIRE(pthread_create(&s.leader, NULL, do_leader_thread, &s) == 0);
    pthread_mutex_lock(&s.mu);
    while (!s.fn_started) pthread_cond_wait(&s.cv, &s.mu);
    pthread_mutex_unlock(&s.mu);
    pthread_cancel(s.leader);
    __atomic_store_n(&s.cancel_sent, 1, __ATOMIC_RELEASE);
    REQUIRE(pthread_join(s.leader, &ret) == 0);
    REQUIRE(ret == PTHREAD_CANCELED);
    REQUIRE(s.reached == 1);
    REQUIRE(s.do_rc == SF_OK); /* fn returned: the flight completed normally */
    REQUIRE(s.follower_fd >= 0);
    {
        struct pollfd p;
        p.fd = s.follower_fd;
        p.events = POLLIN;
        p.revents = 0;
        REQUIRE(poll(&p, 1, 0) == 1);
    }
    REQUIRE(sf_call_wait(s.follower, 0, NULL, NULL) == SF_OK);
    sf_call_release(s.follower);
    REQUIRE(sf_group_free(s.g) == SF_OK);
    pthread_cond_destroy(&s.cv);
    pthread_mutex_destroy(&s.mu);
    return 0;
}

/* ---- a follower cancelled in poll(), whose cleanup handler releases ----- */

struct poll_follower {
    sf_group *g;
    sf_call *call;
};

static void release_handler(void *arg) { sf_call_release(arg); }

static void *poll_follower_thread(void *arg) {
    struct poll_follower *s = arg;
    struct pollfd p;
    if (sf_group_begin(s->g, "k", 1, &s->call) != SF_FOLLOWER) return NULL;
    p.fd = sf_call_fd(s->call);
    p.events = POLLIN;
    pthread_cleanup_push(release_handler, s->call);
    for (;;) poll(&p, 1, -1); /* the leader never finishes before the cancel */
    pthread_cleanup_pop(1);
    return NULL;
}

static int follower_cancelled_in_poll_releases_in_cleanup(void) {
    struct poll_follower s;
    sf_call *leader;
    pthread_t t;
    void *ret = NULL;
    memset(&s, 0, sizeof s);
    REQUIRE(sf_group_new(&s.g, NULL) == SF_OK);
    REQUIRE(sf_group_begin(s.g, "k", 1, &leader) == SF_LEADER);
    REQUIRE(pthread_create(&t, NULL, poll_follower_thread, &s) == 0);
    pthread_cancel(t);
    REQUIRE(pthread_join(t, &ret) == 0);
    REQUIRE(ret == PTHREAD_CANCELED);
    REQUIRE(sf_call_finish(leader, 0) == SF_OK);
    sf_call_release(leader);
    REQUIRE(sf_group_free(s.g) == SF_OK); /* the follower's handle was released */
    return 0;
}

/* ---- a built-in pool worker cancelled while idle ------------------------ */

struct pool_state {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    pthread_t worker;
    int done;
};

static int record_worker_fn(sf_call *call, void *payload) {
    struct pool_state *s = payload;
    (void)call;
    pthread_mutex_lock(&s->mu);
    s->worker = pthread_self();
    pthread_mutex_unlock(&s->mu);
    return 0;
}

static void count_done(int status, sf_result *r, int shared, void *payload) {
    struct pool_state *s = payload;
    (void)r, (void)shared;
    pthread_mutex_lock(&s->mu);
    if (status == SF_OK) s->done++;
    pthread_cond_broadcast(&s->cv);
    pthread_mutex_unlock(&s->mu);
}

static void wait_done(struct pool_state *s, int n) {
    pthread_mutex_lock(&s->mu);
    while (s->done < n) pthread_cond_wait(&s->cv, &s->mu);
    pthread_mutex_unlock(&s->mu);
}

static int cancelled_idle_pool_worker_does_not_hang_the_group(void) {
    struct pool_state s;
    sf_group *g;
    int i;
    memset(&s, 0, sizeof s);
    pthread_mutex_init(&s.mu, NULL);
    pthread_cond_init(&s.cv, NULL);
    REQUIRE(sf_group_new(&g, NULL) == SF_OK);
    REQUIRE(sf_group_do_async(g, "a", 1, record_worker_fn, &s, count_done, &s) == SF_OK);
    wait_done(&s, 1);
    /* The worker's next cancellation point, if it had one, is its idle wait. */
    pthread_cancel(s.worker);
    for (i = 0; i < 3; i++) {
        REQUIRE(sf_group_do_async(g, "b", 1, record_worker_fn, &s, count_done, &s) == SF_OK);
        wait_done(&s, 2 + i);
    }
    REQUIRE(sf_group_free(g) == SF_OK);
    pthread_cond_destroy(&s.cv);
    pthread_mutex_destroy(&s.mu);
    return 0;
}

/* ---- descriptors: given back by sf_call_release at once ----------------- */

static int open_fds(void) {
    int n = 0;
    DIR *d = opendir("/proc/self/fd");
    struct dirent *e;
    if (!d) return -1;
    while ((e = readdir(d)) != NULL)
        if (e->d_name[0] != '.') n++;
    closedir(d);
    return n;
}

static int released_followers_close_their_fds_before_the_flight_ends(void) {
    sf_group *g;
    sf_call *leader, *f;
    int before, i;
    REQUIRE(sf_group_new(&g, NULL) == SF_OK);
    REQUIRE(sf_group_begin(g, "long", 4, &leader) == SF_LEADER);
    before = open_fds();
    REQUIRE(before > 0);
    for (i = 0; i < 200; i++) {
        REQUIRE(sf_group_begin(g, "long", 4, &f) == SF_FOLLOWER);
        REQUIRE(sf_call_fd(f) >= 0);
        sf_call_release(f);
    }
    REQUIRE(open_fds() == before);
    REQUIRE(sf_call_finish(leader, 0) == SF_OK);
    sf_call_release(leader);
    REQUIRE(sf_group_free(g) == SF_OK);
    return 0;
}

/* ---- timeouts at the edges of sf_i64 ------------------------------------ */

struct waiter {
    sf_call *call;
    sf_i64 timeout;
    int rc;
};

static void *wait_thread(void *arg) {
    struct waiter *w = arg;
    w->rc = sf_call_wait(w->call, w->timeout, NULL, NULL);
    return NULL;
}

static int huge_timeouts_saturate_instead_of_overflowing(void) {
    static const sf_i64 huge[] = {INT64_MAX, INT64_MAX - 1, INT64_MAX / 2 + 1};
    sf_group *g;
    sf_call *leader;
    struct waiter w[3];
    pthread_t t[3];
    unsigned i;
    REQUIRE(sf_group_new(&g, NULL) == SF_OK);
    REQUIRE(sf_group_begin(g, "k", 1, &leader) == SF_LEADER);
    for (i = 0; i < 3; i++) {
        REQUIRE(sf_group_begin(g, "k", 1, &w[i].call) == SF_FOLLOWER);
        w[i].timeout = huge[i];
        w[i].rc = -100;
        /* A huge timeout on an unfinished flight must wait, not time out. */
        REQUIRE(pthread_create(&t[i], NULL, wait_thread, &w[i]) == 0);
    }
    {
        /* A tiny one still times out (waited on another thread: this one
         * leads the flight, and a blocking wait here would be SF_EDEADLK). */
        struct waiter tiny;
        pthread_t tt;
        REQUIRE(sf_group_begin(g, "k", 1, &tiny.call) == SF_FOLLOWER);
        tiny.timeout = 1000;
        tiny.rc = -100;
        REQUIRE(pthread_create(&tt, NULL, wait_thread, &tiny) == 0);
        pthread_join(tt, NULL);
        REQUIRE(tiny.rc == SF_ETIMEDOUT);
        sf_call_release(tiny.call);
    }
    REQUIRE(sf_call_finish(leader, 0) == SF_OK);
    for (i = 0; i < 3; i++) {
        pthread_join(t[i], NULL);
        REQUIRE(w[i].rc == SF_OK);
        REQUIRE(sf_call_wait(w[i].call, INT64_MAX, NULL, NULL) == SF_OK);
        sf_call_release(w[i].call);
    }
    sf_call_release(leader);
    REQUIRE(sf_group_free(g) == SF_OK);
    return 0;
}

/* ---- key lengths no object can have -------------------------------------- */

static int dummy_fn(sf_call *call, void *payload) {
    (void)call, (void)payload;
    return 0;
}
static void dummy_done(int status, sf_result *r, int shared, void *payload) {
    (void)status, (void)r, (void)shared, (void)payload;
}

static int key_len_beyond_ptrdiff_max_is_einval(void) {
    static const size_t lens[] = {(size_t)PTRDIFF_MAX + 1, SIZE_MAX, SIZE_MAX / 2 + 7};
    sf_group *g;
    sf_call *c = NULL;
    sf_result *r = (sf_result *)1;
    unsigned i;
    REQUIRE(sf_group_new(&g, NULL) == SF_OK);
    for (i = 0; i < 3; i++) {
        REQUIRE(sf_group_do(g, "k", lens[i], dummy_fn, NULL, &r, NULL) == SF_EINVAL);
        REQUIRE(r == NULL);
        REQUIRE(sf_group_do_async(g, "k", lens[i], dummy_fn, NULL, dummy_done, NULL) == SF_EINVAL);
        REQUIRE(sf_group_begin(g, "k", lens[i], &c) == SF_EINVAL);
        REQUIRE(c == NULL);
        REQUIRE(sf_group_forget(g, "k", lens[i]) == SF_EINVAL);
        REQUIRE(sf_group_forget_unshared(g, "k", lens[i]) == SF_EINVAL);
    }
    REQUIRE(sf_group_free(g) == SF_OK);
    return 0;
}

/* ---- waits that would deadlock ------------------------------------------- */

struct own_key {
    sf_group *g;
    int begin_rc, forever_rc, timed_rc, poll_rc;
};

static int wait_on_own_key_fn(sf_call *call, void *payload) {
    struct own_key *s = payload;
    sf_call *f = NULL;
    (void)call;
    s->begin_rc = sf_group_begin(s->g, "own", 3, &f);
    if (s->begin_rc != SF_FOLLOWER) return 1;
    s->forever_rc = sf_call_wait(f, -1, NULL, NULL);
    s->timed_rc = sf_call_wait(f, 5000000, NULL, NULL);
    s->poll_rc = sf_call_wait(f, 0, NULL, NULL);
    sf_call_release(f);
    return 0;
}

static int waiting_inside_fn_on_its_own_key_is_edeadlk(void) {
    struct own_key s;
    sf_call *leader, *f;
    memset(&s, 0, sizeof s);
    REQUIRE(sf_group_new(&s.g, NULL) == SF_OK);
    REQUIRE(sf_group_do(s.g, "own", 3, wait_on_own_key_fn, &s, NULL, NULL) == SF_OK);
    REQUIRE(s.begin_rc == SF_FOLLOWER);
    REQUIRE(s.forever_rc == SF_EDEADLK);
    REQUIRE(s.timed_rc == SF_ETIMEDOUT); /* bounded: it ends, by timing out */
    REQUIRE(s.poll_rc == SF_ETIMEDOUT);  /* a poll never blocks: not a deadlock */
    /* The same for a two-phase flight this thread leads, when its caller
     * says its work runs here (sf_call_lead_here; merely beginning it here
     * is not enough, as in 1.0: tests/deadlock_test.cpp). */
    REQUIRE(sf_group_begin(s.g, "tp", 2, &leader) == SF_LEADER);
    REQUIRE(sf_group_begin(s.g, "tp", 2, &f) == SF_FOLLOWER);
    REQUIRE(sf_call_lead_here(leader) == SF_OK);
    REQUIRE(sf_call_wait(f, -1, NULL, NULL) == SF_EDEADLK);
    REQUIRE(sf_call_finish(leader, 0) == SF_OK);
    REQUIRE(sf_call_wait(f, -1, NULL, NULL) == SF_OK); /* done: nothing to wait for */
    sf_call_release(f);
    sf_call_release(leader);
    REQUIRE(sf_group_free(s.g) == SF_OK);
    return 0;
}

int main(void) {
    run_isolated("pending cancel: sf_call_finish writes a follower's eventfd",
                 cancel_pending_at_finish_writing_fd, 30);
    run_isolated("pending cancel: sf_call_fd on a completed flight",
                 cancel_pending_at_fd_of_completed_flight, 30);
    run_isolated("pending cancel: sf_call_release closes the eventfd",
                 cancel_pending_at_release_closing_fd, 30);
    run_isolated("pending cancel: a done callback makes system calls",
                 cancel_pending_at_done_callback_syscall, 30);
    run_isolated("sf_group_do leader cancelled while fn computes",
                 do_leader_cancelled_while_fn_computes, 30);
    run_isolated("follower cancelled in poll() releases in its cleanup handler",
                 follower_cancelled_in_poll_releases_in_cleanup, 30);
    run_isolated("cancelled idle pool worker does not hang the group",
                 cancelled_idle_pool_worker_does_not_hang_the_group, 60);
    run_isolated("200 released followers give their eventfds back at once",
                 released_followers_close_their_fds_before_the_flight_ends, 30);
    run_isolated("huge timeouts saturate", huge_timeouts_saturate_instead_of_overflowing, 30);
    run_isolated("key_len > PTRDIFF_MAX is SF_EINVAL", key_len_beyond_ptrdiff_max_is_einval, 30);
    run_isolated("waiting inside fn on its own key is SF_EDEADLK",
                 waiting_inside_fn_on_its_own_key_is_edeadlk, 30);
    printf("c_contract_test: %d passed, %d failed\n", scenarios - failures, failures);
    return failures ? 1 : 0;
}
