// The built-in executor behind sf_group_do_async: a small pool of threads
// that grows on demand up to a cap (fn may block, as Go's DoChan goroutines
// may) and survives a task whose thread exits inside fn.
//
// Workers run with cancellation disabled except while a task runs, so a
// cancellation request can never be acted upon inside the pool's own waits
// (pthread_cond_wait would re-take the mutex and unwind into code that takes
// it again).  A request that reaches an idle worker is acted upon at a safe
// point between tasks, where the worker holds no lock and owns no task: it
// leaves, and the pool starts another thread if work is queued.
#pragma once

#include <pthread.h>

#include "core/types.hpp"

namespace sf {

class Pool {
public:
    static constexpr unsigned kDefaultThreads = 64;
    static constexpr unsigned kMaxThreads = 4096;

    // nullptr when out of memory.  max_threads: the cap, 0 for the default.
    static Pool *create(unsigned max_threads) noexcept;
    static void destroy(Pool *p) noexcept;  // stops and joins every worker
    // kOk, or kNoMemory when neither a queue node nor a thread could be had.
    Status submit(TaskFn task, void *arg) noexcept;
    // True when called on one of this pool's worker threads (a task or a
    // done callback): such a thread cannot join itself.
    bool on_worker_thread() noexcept;
    // In a forked child: forget the parent's threads and queued tasks.
    void reset_after_fork() noexcept;

    Pool() noexcept;  // use create(); public only for detail::make

private:
    struct Task {
        Task *next;
        TaskFn fn;
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
    void leave_if_cancelled();     // caller holds mu_ and returns holding it

    pthread_mutex_t mu_;
    pthread_cond_t cv_;
    Task *head_ = nullptr;
    Task *tail_ = nullptr;
    int live_ = 0;
    int idle_ = 0;
    int queued_ = 0;
    bool stop_ = false;
    int max_threads_ = 0;
    Slot *slots_ = nullptr;  // max_threads_ of them
};

}  // namespace sf
