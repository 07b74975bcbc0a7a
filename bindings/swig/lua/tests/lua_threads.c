/* lua_threads.c - runs one Lua script in N OS threads, each in its own
 * lua_State, and checks that every run succeeded and returned the same
 * string.  It is how the tests show that Lua states on different threads
 * share a group (singleflight.shared) and that values cross states as
 * strings: Lua itself has no threads.
 *
 * usage: sf_lua_threads N script.lua
 * The script sees globals THREAD_ID (1..N) and NTHREADS, and returns a
 * string.  Exit status 0 when all N runs returned the same string. */
#include <lauxlib.h>
#include <lua.h>
#include <lualib.h>

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MAX_THREADS 64

struct run {
    pthread_t thread;
    int id, n;
    const char *script;
    char *result; /* malloc'd copy of the returned string, or NULL */
    char error[512];
};

static void *run_script(void *arg) {
    struct run *r = arg;
    lua_State *L = luaL_newstate();
    if (!L) {
        snprintf(r->error, sizeof r->error, "luaL_newstate failed");
        return NULL;
    }
    luaL_openlibs(L);
    lua_pushinteger(L, r->id);
    lua_setglobal(L, "THREAD_ID");
    lua_pushinteger(L, r->n);
    lua_setglobal(L, "NTHREADS");
    if (luaL_loadfile(L, r->script) != LUA_OK || lua_pcall(L, 0, 1, 0) != LUA_OK) {
        snprintf(r->error, sizeof r->error, "%s", lua_tostring(L, -1));
    } else if (lua_type(L, -1) != LUA_TSTRING) {
        snprintf(r->error, sizeof r->error, "script returned %s, not a string",
                 luaL_typename(L, -1));
    } else {
        size_t len = 0;
        const char *s = lua_tolstring(L, -1, &len);
        r->result = malloc(len + 1);
        if (r->result) memcpy(r->result, s, len + 1);
    }
    /* Closing the state collects its group handle, as a thread would. */
    lua_close(L);
    return NULL;
}

int main(int argc, char **argv) {
    if (argc != 3) {
        fprintf(stderr, "usage: %s N script.lua\n", argv[0]);
        return 2;
    }
    int n = atoi(argv[1]);
    if (n < 1 || n > MAX_THREADS) {
        fprintf(stderr, "N must be 1..%d\n", MAX_THREADS);
        return 2;
    }
    struct run runs[MAX_THREADS];
    memset(runs, 0, sizeof runs);
    for (int i = 0; i < n; i++) {
        runs[i].id = i + 1;
        runs[i].n = n;
        runs[i].script = argv[2];
        if (pthread_create(&runs[i].thread, NULL, run_script, &runs[i]) != 0) {
            fprintf(stderr, "pthread_create failed\n");
            return 1;
        }
    }
    int failed = 0;
    for (int i = 0; i < n; i++) pthread_join(runs[i].thread, NULL);
    for (int i = 0; i < n; i++) {
        if (!runs[i].result) {
            fprintf(stderr, "thread %d failed: %s\n", runs[i].id, runs[i].error);
            failed = 1;
        } else if (strcmp(runs[i].result, runs[0].result ? runs[0].result : "") != 0) {
            fprintf(stderr, "thread %d got \"%s\", thread 1 got \"%s\"\n", runs[i].id,
                    runs[i].result, runs[0].result ? runs[0].result : "(nothing)");
            failed = 1;
        }
    }
    if (!failed) printf("%d Lua states on %d threads all got \"%s\"\n", n, n, runs[0].result);
    for (int i = 0; i < n; i++) free(runs[i].result);
    return failed;
}
