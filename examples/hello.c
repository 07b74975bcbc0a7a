/*
 * Go's singleflight example, in C: ten threads ask for "key1" at the same
 * time, the fetch runs once, and every thread prints the shared data.
 *
 * To make "at the same time" certain rather than likely, the fetch waits until
 * the other nine threads have joined the flight (visible in the group's
 * stats) before it returns; a real fetch would take long enough by itself.
 */
#define _POSIX_C_SOURCE 200809L
#include <pthread.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "singleflight.h"

#define THREADS 10

static sf_group *group;
static pthread_barrier_t start;

static unsigned long followers_now(void) {
    sf_group_stats st;
    st.version = SF_GROUP_STATS_VERSION;
    sf_group_stats_get(group, &st);
    return (unsigned long)st.followers;
}

/* The "database query": builds "<key> data" and hands it to the flight. */
static int get_data(sf_call *call, void *payload) {
    const char *key = payload;
    char *data = malloc(strlen(key) + sizeof " data");
    if (!data) return 1;
    sprintf(data, "%s data", key);
    while (followers_now() < THREADS - 1) sched_yield();
    sf_call_set_value(call, data, free);
    return 0;
}

static void *worker(void *arg) {
    sf_result *res = NULL;
    int shared = 0, rc;
    (void)arg;
    pthread_barrier_wait(&start);
    rc = sf_group_do(group, "key1", 4, get_data, "key1", &res, &shared);
    if (rc != SF_OK || sf_result_error(res) != 0) {
        printf("Error: %s\n", rc != SF_OK ? sf_strerror(rc) : "fetch failed");
    } else {
        printf("Got data: %s, shared: %s\n", (const char *)sf_result_value(res),
               shared ? "true" : "false");
    }
    sf_result_release(res);
    return NULL;
}

int main(void) {
    pthread_t threads[THREADS];
    sf_group_stats st;
    int i;

    if (sf_group_new(&group, NULL) != SF_OK) return 1;
    pthread_barrier_init(&start, NULL, THREADS);
    for (i = 0; i < THREADS; i++) pthread_create(&threads[i], NULL, worker, NULL);
    for (i = 0; i < THREADS; i++) pthread_join(threads[i], NULL);
    pthread_barrier_destroy(&start);

    st.version = SF_GROUP_STATS_VERSION;
    sf_group_stats_get(group, &st);
    printf("calls: %lu, executions: %lu (libsingleflight %s)\n", (unsigned long)st.calls,
           (unsigned long)st.leaders, sf_version_string());
    return sf_group_free(group) == SF_OK && st.leaders == 1 ? 0 : 1;
}
