#include "core/pool.hpp"

#include <cxxabi.h>

#include "core/alloc.hpp"
#include "core/platform.hpp"

namespace sf {

Pool::Pool() noexcept {
    pthread_mutex_init(&mu_, nullptr);
    pthread_cond_init(&cv_, nullptr);
}

Pool *Pool::create(unsigned max_threads) noexcept {
    int cap = int(max_threads ? max_threads : kDefaultThreads);
    auto *slots = static_cast<Slot *>(detail::alloc(sizeof(Slot) * std::size_t(cap)));
    if (!slots) return nullptr;
    for (int i = 0; i < cap; ++i) slots[i] = Slot{pthread_t(), false, false};
    Pool *p = detail::make<Pool>();
    if (!p) {
        detail::dealloc(slots);
        return nullptr;
    }
    p->slots_ = slots;
    p->max_threads_ = cap;
    return p;
}

void Pool::destroy(Pool *p) noexcept {
    if (!p) return;
    pthread_mutex_lock(&p->mu_);
    p->stop_ = true;
    pthread_cond_broadcast(&p->cv_);
    pthread_mutex_unlock(&p->mu_);
    // Workers leave their slot marked used, so each is joined exactly once
    // here; a worker that died inside fn is joinable like any other.
    for (int i = 0; i < p->max_threads_; ++i) {
        if (p->slots_[i].used) pthread_join(p->slots_[i].tid, nullptr);
    }
    while (Task *t = p->head_) {  // only reachable if tasks were never run
        p->head_ = t->next;
        detail::dealloc(t);
    }
    detail::dealloc(p->slots_);
    pthread_cond_destroy(&p->cv_);
    pthread_mutex_destroy(&p->mu_);
    detail::unmake(p);
}

bool Pool::spawn_locked() noexcept {
    Slot *slot = nullptr;
    for (int i = 0; i < max_threads_; ++i) {
        if (!slots_[i].used) {
            slot = &slots_[i];
            break;
        }
    }
    if (!slot) {
        for (int i = 0; i < max_threads_; ++i) {
            Slot &s = slots_[i];
            if (s.exited) {  // reap a worker that has left its loop
                pthread_join(s.tid, nullptr);
                s.used = false;
                slot = &s;
                break;
            }
        }
    }
    if (!slot) return false;
    // The worker learns its slot through the tid it will find there.
    if (pthread_create(&slot->tid, nullptr, worker_main, this) != 0) return false;
    slot->used = true;
    slot->exited = false;
    ++live_;
    return true;
}

Status Pool::submit(TaskFn task, void *arg) noexcept {
    Task *t = static_cast<Task *>(detail::alloc(sizeof(Task)));
    if (!t) return kNoMemory;
    t->next = nullptr;
    t->fn = task;
    t->arg = arg;
    pthread_mutex_lock(&mu_);
    // Every queued task needs a thread of its own: fn may block for long,
    // and a task stuck behind another could wait on it (Go gives each DoChan
    // its own goroutine).  Idle workers already signalled are not spare.
    if (queued_ + 1 > idle_ && live_ < max_threads_ && !spawn_locked() && live_ == 0) {
        pthread_mutex_unlock(&mu_);
        detail::dealloc(t);
        return kNoMemory;  // no thread at all would ever run it
    }
    if (tail_) tail_->next = t;
    else head_ = t;
    tail_ = t;
    ++queued_;
    pthread_cond_signal(&cv_);
    pthread_mutex_unlock(&mu_);
    return kOk;
}

// Leaves the pool's books straight however the worker ends: normally at
// stop, or by a forced unwind when fn called pthread_exit or was cancelled.
struct Pool::ExitGuard {
    Pool *pool;
    ~ExitGuard() {
        pthread_mutex_lock(&pool->mu_);
        --pool->live_;
        pthread_t self = pthread_self();
        for (int i = 0; i < pool->max_threads_; ++i) {
            Slot &s = pool->slots_[i];
            if (s.used && pthread_equal(s.tid, self)) s.exited = true;
        }
        // Tasks still queued must not wait for a thread that is gone.
        if (!pool->stop_ && pool->queued_ > pool->idle_) pool->spawn_locked();
        pthread_mutex_unlock(&pool->mu_);
    }
};

SF_CATCHES_FORCED_UNWIND
void *Pool::worker_main(void *self) {
    // A worker is cancellable only while a task runs (inside fn the flight
    // machinery turns it into SF_EGOEXIT) and at the safe point between
    // tasks; noexcept would turn a forced unwind into terminate, so the loop
    // runs in a function that may throw.
    pthread_setcancelstate(PTHREAD_CANCEL_DISABLE, nullptr);
    try {
        static_cast<Pool *>(self)->worker_loop();
    } catch (abi::__forced_unwind &) {
        throw;
    } catch (...) {}
    return nullptr;
}

// The safe point: a cancellation that reached this worker while it was idle
// (or that a task left pending) is acted upon here, with no lock held and
// no task owned; ExitGuard then keeps the books and replaces the worker if
// work is queued.
void Pool::leave_if_cancelled() {
    pthread_mutex_unlock(&mu_);
    pthread_setcancelstate(PTHREAD_CANCEL_ENABLE, nullptr);
    detail::before_forced_unwind();
    pthread_testcancel();
    pthread_setcancelstate(PTHREAD_CANCEL_DISABLE, nullptr);
    pthread_mutex_lock(&mu_);
}

void Pool::worker_loop() {
    ExitGuard guard{this};
    pthread_mutex_lock(&mu_);
    for (;;) {
        while (!head_ && !stop_) {
            ++idle_;
            pthread_cond_wait(&cv_, &mu_);  // not a cancellation point here
            --idle_;
        }
        if (head_) leave_if_cancelled();  // may have been emptied meanwhile
        Task *t = head_;
        if (!t) {
            if (stop_) break;  // stopping and drained
            continue;
        }
        head_ = t->next;
        if (!head_) tail_ = nullptr;
        --queued_;
        pthread_mutex_unlock(&mu_);
        TaskFn fn = t->fn;
        void *arg = t->arg;
        detail::dealloc(t);
        // The task's code decides about cancellation for itself (async_task
        // keeps it for fn alone); it starts from the default, enabled.
        pthread_setcancelstate(PTHREAD_CANCEL_ENABLE, nullptr);
        fn(arg);
        pthread_setcancelstate(PTHREAD_CANCEL_DISABLE, nullptr);
        pthread_mutex_lock(&mu_);
        leave_if_cancelled();
    }
    pthread_mutex_unlock(&mu_);
}

bool Pool::on_worker_thread() noexcept {
    pthread_t self = pthread_self();
    pthread_mutex_lock(&mu_);
    bool found = false;
    for (int i = 0; i < max_threads_; ++i) {
        const Slot &s = slots_[i];
        if (s.used && !s.exited && pthread_equal(s.tid, self)) found = true;
    }
    pthread_mutex_unlock(&mu_);
    return found;
}

void Pool::reset_after_fork() noexcept {
    // The parent's workers do not exist here and its lock may have been
    // held by one of them: start over (queued parent tasks are abandoned).
    pthread_mutex_init(&mu_, nullptr);
    pthread_cond_init(&cv_, nullptr);
    head_ = tail_ = nullptr;
    live_ = idle_ = queued_ = 0;
    stop_ = false;
    for (int i = 0; i < max_threads_; ++i) slots_[i] = Slot{pthread_t(), false, false};
}

}  // namespace sf
