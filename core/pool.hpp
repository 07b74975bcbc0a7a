// The built-in executor behind sf_group_do_async: a small pool of threads
// that grows on demand (fn may block, as Go's DoChan goroutines may) and
// survives a task whose thread exits inside fn.
#pragma once

#include <pthread.h>

#include "singleflight.h"

namespace sf {

class Pool {
public:
    static Pool *create() noexcept;              // nullptr when out of memory
    static void destroy(Pool *p) noexcept;       // stops and joins every worker
    // SF_OK, or SF_ENOMEM when neither a queue node nor a thread could be had.
    int submit(sf_task_fn task, void *arg) noexcept;
    // True when called on one of this pool's worker threads (a task or a
    // done callback): such a thread cannot join itself.
    bool on_worker_thread() noexcept;
    // In a forked child: forget the parent's threads and queued tasks.
    void reset_after_fork() noexcept;

    static constexpr int kMaxThreads = 64;

    Pool() noexcept;  // use create(); public only for detail::make

private:
    struct Task {
        Task *next;
        sf_task_fn fn;
        void *arg;
    };
    struct Slot {
        pthread_t tid;
        bool used;
        bool exited;
    };
    struct ExitGuard;

    static void *worker_main(void *self);  // may end in a forced unwind
    void worker_loop();
    bool spawn_locked() noexcept;  // caller holds mu_

    pthread_mutex_t mu_;
    pthread_cond_t cv_;
    Task *head_ = nullptr;
    Task *tail_ = nullptr;
    int live_ = 0;
    int idle_ = 0;
    int queued_ = 0;
    bool stop_ = false;
    Slot slots_[kMaxThreads];
};

}  // namespace sf
