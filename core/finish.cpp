#include "core/finish.hpp"

#include "core/group.hpp"
#include "core/notify.hpp"

namespace sf {

namespace {
// Decides the message sf_result_panic_message returns.  message (a
// two-phase sf_call_panic, an exception's what(), a refusal) replaces a
// pending one from sf_call_panic inside fn; NULL keeps the pending one.
void set_panic_message(Flight *f, const char *message) noexcept {
    Ext *e = flight_ext(f);
    if (!e) return;  // sf_result_panic_message then says the message was lost
    if (message) {
        char *copy = copy_message(message);
        if (f->lflags & kMessageOwned) detail::dealloc(const_cast<char *>(e->message));
        e->message = copy ? copy : kPanicMessageLost;
        f->lflags = uint8_t(copy ? f->lflags | kMessageOwned : f->lflags & ~kMessageOwned);
    } else if (!e->message) {
        e->message = (f->lflags & kMessageLost) ? kPanicMessageLost : kPanicDefault;
    }
}
}  // namespace

void publish_wake(Flight *f, uint32_t seen) noexcept {
    if (seen & kWaiters) detail::futex_wake_all(&f->state);
    if (seen & kNotify) notify_completion(f);
}

void publish_outcome(Flight *f, Status status, int error, const char *message) noexcept {
    f->status_ = int8_t(status);
    f->error = error;
    if (status == kPanic) set_panic_message(f, message);
    const uint32_t s = f->state.load(std::memory_order_relaxed);
    if (f->mode == kModeDo && !(s & (kShared | kNotify | kLocked | kWaiters))) {
        // Nobody ever joined, and a do flight takes no registrations but
        // its joiners': no other thread writes the state word any more.
        f->state.store(s | kDone | kFinished, std::memory_order_release);
        return;
    }
    publish_wake(f, f->state.fetch_or(kDone | kFinished, std::memory_order_acq_rel));
}

void finish(Flight *f, Status status, int error, const char *message) noexcept {
    if (!flight_orphaned(f)) {
        const int64_t joiners = f->group->table().unpublish(f);
        if (joiners >= 0) {
            if (joiners > 0) flight_fold(f, uint32_t(joiners), false);
        } else {
            flight_wait_unpublished(f);
        }
        if (!flight_orphaned(f) && !(f->lflags & kUncounted)) {
            Stats &st = f->group->stats();
            st.add(kCompleted);
            if (status == kPanic) st.add(kPanics);
            if (status == kGoexit) st.add(kGoexits);
        }
    }
    publish_outcome(f, status, error, message);
}

}  // namespace sf
