// The core's own vocabulary: status codes, counters and callback records.
// The core is plain C++ and never includes the public C header; the C layer
// (capi/) checks that these values equal the header's and converts.
#pragma once

#include <cstddef>
#include <cstdint>

namespace sf {

// The values are the ABI's (capi/handles.hpp asserts it): the C layer passes
// them through unchanged.
enum Status : int {
    kOk = 0,
    kLeader = 1,
    kFollower = 2,
    kInvalid = -1,
    kNoMemory = -2,
    kPanic = -3,
    kGoexit = -4,
    kDeadlock = -5,
    kTimedOut = -6,
    kBusy = -7,
    kBadState = -8,
    kCanceled = -9,
    kPermission = -10,    // a shared segment of another user, or wider permissions
    kIncompatible = -11,  // a shared segment of another layout, version or size
    // Core-internal, never returned to a C caller: the group is a shared
    // group's handle, whose calls the C layer sends to core/shared.hpp.
    // Reported from the slow path only, so local calls pay nothing for it.
    kNotLocal = -100,
};

// A key: bytes and a length (std::string_view without the header's weight
// on the hot path, and with no promise of NUL termination).
struct Key {
    const void *data;
    std::size_t size;
};

// The counters sf_group_stats reports, summed over the stats stripes.
struct Counts {
    uint64_t leaders, followers, completed, panics, goexits, timeouts, forgets, handles, abandons,
        cancels;
};

struct Flight;

// A callback the core runs without knowing its caller's types: the C layer
// stores its user's function pointer and payload in fn and payload, and an
// `invoke` that casts fn back and calls it.  One indirection, no casts of
// function pointer types.
struct DoneCallback {
    void (*invoke)(void *fn, void *payload, Status status, Flight *result, bool shared) noexcept;
    void *fn;
    void *payload;
    explicit operator bool() const noexcept { return invoke != nullptr; }
};

// do_async's work, the same way: `run` calls the user's fn with the leader's
// call handle (the flight).  It may throw (a panic) or unwind (Goexit).
struct WorkCallback {
    int (*run)(void *fn, void *payload, Flight *call);
    void *fn;
    void *payload;
};

// Runs once when a flight is abandoned (SF_1.1).
struct AbandonCallback {
    void (*invoke)(void *fn, void *payload, Flight *call) noexcept;
    void *fn;
    void *payload;
};

using DestroyFn = void (*)(void *value);
using TaskFn = void (*)(void *arg);
using ExecutorFn = int (*)(TaskFn task, void *arg, void *payload);

}  // namespace sf
