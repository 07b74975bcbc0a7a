// The one place where public handles and core objects meet.  The opaque
// handle types are never defined: an sf_group* is a core Group, an sf_call*
// a core Call (a flight or a follower record), an sf_result* a core Flight.
// Everything else in capi/ converts through these functions.
#pragma once

#include "core/call.hpp"
#include "core/group.hpp"
#include "core/pool.hpp"
#include "core/shared.hpp"
#include "core/types.hpp"
#include "singleflight.h"

namespace sfc {

inline sf::Group *core(sf_group *g) { return reinterpret_cast<sf::Group *>(g); }
inline const sf::Group *core(const sf_group *g) { return reinterpret_cast<const sf::Group *>(g); }
inline sf_group *handle(sf::Group *g) { return reinterpret_cast<sf_group *>(g); }

inline sf::Call *core(sf_call *c) { return reinterpret_cast<sf::Call *>(c); }
inline const sf::Call *core(const sf_call *c) { return reinterpret_cast<const sf::Call *>(c); }
inline sf_call *handle(sf::Call *c) { return reinterpret_cast<sf_call *>(c); }
inline sf_call *handle(sf::Flight *f) { return handle(sf::as_call(f)); }

inline sf::Flight *core(sf_result *r) { return reinterpret_cast<sf::Flight *>(r); }
inline const sf::Flight *core(const sf_result *r) {
    return reinterpret_cast<const sf::Flight *>(r);
}
inline sf_result *result(sf::Flight *f) { return reinterpret_cast<sf_result *>(f); }

// A call of a shared group: a process-local record that starts with its
// own role byte (core/shared.hpp), told apart from the local ones by that
// byte alone.  (Its results are shaped like local ones.)
inline sf::SharedCall *shared_call(sf_call *c) {
    return *reinterpret_cast<const uint8_t *>(c) == sf::kRoleSharedCall
               ? reinterpret_cast<sf::SharedCall *>(c)
               : nullptr;
}
inline const sf::SharedCall *shared_call(const sf_call *c) {
    return shared_call(const_cast<sf_call *>(c));
}
inline sf_call *handle(sf::SharedCall *c) { return reinterpret_cast<sf_call *>(c); }

// The core's status values are the ABI's.
static_assert(int(sf::kOk) == SF_OK && int(sf::kLeader) == SF_LEADER &&
                  int(sf::kFollower) == SF_FOLLOWER && int(sf::kInvalid) == SF_EINVAL &&
                  int(sf::kNoMemory) == SF_ENOMEM && int(sf::kPanic) == SF_EPANIC &&
                  int(sf::kGoexit) == SF_EGOEXIT && int(sf::kDeadlock) == SF_EDEADLK &&
                  int(sf::kTimedOut) == SF_ETIMEDOUT && int(sf::kBusy) == SF_EBUSY &&
                  int(sf::kBadState) == SF_ESTATE && int(sf::kCanceled) == SF_ECANCELED &&
                  int(sf::kPermission) == SF_EPERM && int(sf::kIncompatible) == SF_EINCOMPAT,
              "core::Status mirrors the header's codes");
static_assert(sf::Pool::kDefaultThreads == SF_POOL_DEFAULT_THREADS &&
                  sf::Pool::kMaxThreads == SF_POOL_MAX_THREADS,
              "the pool's caps are the header's");

// Callback records: the core calls invoke, which casts back to the user's
// function pointer type and calls it with public handles.
inline sf::DoneCallback done_callback(sf_done_fn done, void *payload) {
    return sf::DoneCallback{
        [](void *fn, void *p, sf::Status status, sf::Flight *r, bool shared) noexcept {
            try {
                reinterpret_cast<sf_done_fn>(fn)(int(status), result(r), shared ? 1 : 0, p);
            } catch (...) {
                // must not throw (header); the other callers still get theirs
            }
        },
        reinterpret_cast<void *>(done), payload};
}

inline sf::AbandonCallback abandon_callback(sf_abandon_fn fn, void *payload) {
    return sf::AbandonCallback{[](void *f, void *p, sf::Flight *call) noexcept {
                                   try {
                                       reinterpret_cast<sf_abandon_fn>(f)(handle(call), p);
                                   } catch (...) {
                                       // must not throw (header): the boundary stays shut
                                   }
                               },
                               reinterpret_cast<void *>(fn), payload};
}

inline sf::WorkCallback work_callback(sf_fn fn, void *payload) {
    return sf::WorkCallback{[](void *f, void *p, sf::Flight *call) -> int {
                                return reinterpret_cast<sf_fn>(f)(handle(call), p);
                            },
                            reinterpret_cast<void *>(fn), payload};
}

}  // namespace sfc
