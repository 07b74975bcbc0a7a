/* Reproducer (fails on 1.2.0; not registered in ctest until the library is
 * fixed): a child forked from a process that opened a shared group makes
 * its first calls on that group from several threads at once.  The man page
 * says a forked child may use its parent's handle and "becomes a process of
 * the group of its own at its first call"; that first-call re-attach
 * (check_fork in core/shared.cpp) takes no lock, so threads that arrive
 * together each close the parent's descriptor, reopen and flock the segment
 * file into the one g->fd_, claim a process slot, reset the doorbell and
 * start a helper.  Two outcomes, both seen here within 200 children:
 *  - calls fail with SF_ENOMEM (a thread finds bell_fd_ reset to -1 by
 *    another; seen in the demo's part 3 with --shared-open before, about
 *    one run in ten);
 *  - the child hangs: threads block for ever in flock() inside
 *    shm_open_locked, because a thread's shm_unlock(g->fd_) unlocked
 *    another thread's descriptor and the first flock is never released
 *    (here the child's alarm turns the hang into a failure).
 *
 *   cc -O2 -pthread -Icapi/include tests/repro/shared_fork_first_calls.c \
 *      -o /tmp/repro -L<build> -lsingleflight && LD_LIBRARY_PATH=<build> /tmp/repro
 *
 * Exit 0: every call of every child succeeded.  Exit 1: a call failed. */
#include <singleflight.h>

#include <pthread.h>
#include <stdio.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#define THREADS 8
#define CHILDREN 200

static sf_group *group;
static pthread_barrier_t together;

static int fn(sf_call *call, void *payload) {
    (void)payload;
    return sf_call_set_bytes(call, "row", 3) == SF_OK ? 0 : 1;
}

static void *first_call(void *arg) {
    char key[16];
    int n = snprintf(key, sizeof key, "k%ld", (long)arg);
    sf_result *r = NULL;
    pthread_barrier_wait(&together); /* all first calls at once */
    int rc = sf_group_do(group, key, (size_t)n, fn, NULL, &r, NULL);
    if (rc != SF_OK) fprintf(stderr, "child %d: sf_group_do: %s\n", (int)getpid(), sf_err_name(rc));
    sf_result_release(r);
    return (void *)(long)(rc != SF_OK);
}

int main(void) {
    char name[64];
    snprintf(name, sizeof name, "repro-fork-first-%d", (int)getpid());
    if (sf_group_open_shared(name, NULL, &group) != SF_OK) return 2;
    int failed = 0;
    for (int c = 0; c < CHILDREN; ++c) {
        pid_t pid = fork();
        if (pid == 0) {
            pthread_t t[THREADS];
            alarm(10); /* a hung child fails instead of hanging the run */
            long bad = 0;
            pthread_barrier_init(&together, NULL, THREADS);
            for (long i = 0; i < THREADS; ++i) pthread_create(&t[i], NULL, first_call, (void *)i);
            for (int i = 0; i < THREADS; ++i) {
                void *rv;
                pthread_join(t[i], &rv);
                bad |= (long)rv;
            }
            _exit(bad ? 1 : 0);
        }
        int st = 0;
        waitpid(pid, &st, 0);
        if (!WIFEXITED(st) || WEXITSTATUS(st) != 0) failed++;
    }
    sf_group_free(group);
    printf("%d of %d children had a failed first call\n", failed, CHILDREN);
    return failed ? 1 : 0;
}
