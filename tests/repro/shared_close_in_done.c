/* Reproducer (not registered: it fails on libsingleflight 1.2.0): closing a
 * shared group while an sf_call_on_done callback of it is still running on
 * the library's helper thread.
 *
 * sf_group_free (shared_close) defers the detach while objects of the group
 * are alive and lets the last object_gone() run it.  The callback's result
 * is such an object, dropped by the helper thread after the callback
 * returns, so the helper itself runs maybe_detach(): stop_helper() joins
 * the calling thread (EDEADLK, ignored), destroy_group() frees the group,
 * and helper_main() goes on reading the freed group (deliver_all_local,
 * poller_wait).  Seen as a SIGSEGV in deliver_all_local (shared.cpp) from
 * the Go binding under the race detector, where the process's exit is slow
 * enough for the helper to run on.
 *
 * The sequence, made deterministic with two semaphores: a parent leads a
 * two-phase flight; a forked child follows it with sf_call_on_done; the
 * parent finishes; the child's helper runs the callback, which lets the
 * child's main thread release its call and free the group, and returns only
 * after that.  A correct library ends the helper thread; this one leaves it
 * running on freed memory (ASan: heap-use-after-free; otherwise a crash or
 * a helper that never ends).
 *
 *   cc -o /tmp/repro tests/repro/shared_close_in_done.c \
 *      $(pkg-config --cflags --libs singleflight) -pthread && /tmp/repro
 *
 * Exit status 0: fixed.  1: the helper thread outlived the group.  Killed by
 * a signal: the helper crashed. */
#define _GNU_SOURCE
#include <singleflight.h>

#include <semaphore.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static sem_t in_callback, group_freed;

static void done(int status, sf_result *r, int shared, void *payload) {
    (void)status, (void)r, (void)shared, (void)payload;
    sem_post(&in_callback);
    sem_wait(&group_freed); /* return only once the group was freed */
}

static int threads(void) {
    char line[256];
    int n = -1;
    FILE *f = fopen("/proc/self/status", "r");
    if (!f) return -1;
    while (fgets(line, sizeof line, f))
        if (strncmp(line, "Threads:", 8) == 0) n = atoi(line + 8);
    fclose(f);
    return n;
}

int main(void) {
    char name[64];
    snprintf(name, sizeof name, "repro-close-in-done-%d", (int)getpid());
    sf_group *g;
    if (sf_group_open_shared(name, NULL, &g) != SF_OK) return 2;
    sf_call *lead;
    if (sf_group_begin(g, "k", 1, &lead) != SF_LEADER) return 2;

    int joined[2];
    if (pipe(joined) != 0) return 2;
    pid_t pid = fork();
    if (pid == 0) {
        sem_init(&in_callback, 0, 0);
        sem_init(&group_freed, 0, 0);
        sf_group *cg;
        sf_call *c;
        if (sf_group_open_shared(name, NULL, &cg) != SF_OK) _exit(2);
        if (sf_group_begin(cg, "k", 1, &c) != SF_FOLLOWER) _exit(2);
        if (sf_call_on_done(c, done, NULL) != SF_OK) _exit(2);
        if (write(joined[1], "j", 1) != 1) _exit(2);
        sem_wait(&in_callback);
        sf_call_release(c);
        int rc = sf_group_free(cg);
        sem_post(&group_freed);
        if (rc != SF_OK) _exit(2);
        /* The helper thread should end now that the group is gone. */
        for (int i = 0; i < 5000 && threads() > 1; ++i) {
            struct timespec ms = {0, 1000000};
            nanosleep(&ms, NULL);
        }
        _exit(threads() == 1 ? 0 : 1);
    }
    char b;
    if (read(joined[0], &b, 1) != 1) return 2;
    sf_call_set_bytes(lead, "v", 1);
    sf_call_finish(lead, 0);
    sf_call_release(lead);
    int status;
    waitpid(pid, &status, 0);
    sf_group_free(g);
    if (WIFSIGNALED(status)) {
        printf("the child died of signal %d: its helper crashed on the freed group\n",
               WTERMSIG(status));
        return 1;
    }
    printf("child exit %d (%s)\n", WEXITSTATUS(status),
           WEXITSTATUS(status) == 0 ? "fixed" : "the helper outlived its group");
    return WEXITSTATUS(status);
}
