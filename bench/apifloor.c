/* The cost of the C API's shape with no singleflight behind it: a shared
 * library whose four entry points mirror the ones a trivial sf_group_do call
 * makes (the call, the value stored from inside fn, the value read, the
 * result released), each doing the least its contract allows (no table, no
 * flight, no stats).  sfbench's `apifloor` contender calls these the same
 * way the `capi` contender calls libsingleflight, through the PLT, so
 * capi - apifloor is what the singleflight machinery itself costs, and
 * x/sync / apifloor bounds the ratio any library with this API can reach on
 * this machine. */
#include <stddef.h>

#if defined(__GNUC__)
#define FLOOR_API __attribute__((visibility("default"), noinline))
#else
#define FLOOR_API
#endif

typedef struct floor_call {
    void *value;
    void (*destroy)(void *);
} floor_call;

typedef int (*floor_fn)(floor_call *call, void *payload);

FLOOR_API int floor_group_do(void *g, const void *key, size_t key_len, floor_fn fn, void *payload,
                             floor_call **result, int *shared) {
    /* A real call reads the key; so does this one, so the compiler cannot
     * treat it as dead. */
    static __thread floor_call slot __attribute__((tls_model("initial-exec")));
    if (!g || !fn || (!key && key_len)) return -1;
    slot.value = NULL;
    slot.destroy = NULL;
    int rc = fn(&slot, payload);
    *result = &slot;
    *shared = key_len == (size_t)-1;
    return rc;
}

FLOOR_API void floor_call_set_value(floor_call *call, void *value, void (*destroy)(void *)) {
    if (!call) return;
    call->value = value;
    call->destroy = destroy;
}

FLOOR_API void *floor_result_value(const floor_call *r) { return r ? r->value : NULL; }

FLOOR_API void floor_result_release(floor_call *r) {
    if (r && r->destroy) r->destroy(r->value);
}
