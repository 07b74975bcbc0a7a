// The OS facilities of a shared group, and only those: a named shared
// memory object or file mapped by every process of the group, the lock
// that orders their opening and closing, process identity that survives
// pid reuse, pidfds and an epoll set to hear of a process's death at once,
// and doorbells (FIFOs beside the segment) that one process rings to wake
// another's event loop.  Everything returns a Status or a descriptor; no
// errno escapes.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

#include "core/thread.hpp"
#include "core/types.hpp"

namespace sf {
namespace detail {

// Where a segment lives: a POSIX shared memory object (/dev/shm) named
// from the user's name, or a file path (a volume containers share).
struct ShmPath {
    std::string path;  // what open(2)/stat(2) take: /dev/shm/<object> or the file
    std::string shm;   // the shm_open name ("/libsingleflight.<name>"), or empty for a file
};
// kInvalid for a name that is empty, longer than 200 bytes, or holds
// anything but [A-Za-z0-9._-] (a '/' included), or starts with '.'.
Status shm_path_for_name(const char *name, ShmPath *out) noexcept;

// Opens (creating if absent, with mode) and locks the segment file for
// the caller's setup or teardown: an exclusive flock, then a check that the
// locked file is still the one the path names (a closer may have unlinked
// it meanwhile; then it retries).  On kOk, *fd is locked; *size its size
// (0: just created), *uid and *mode its owner and permission bits.
// *id (when not null) names the file for good while it is linked: its
// device and inode.
struct FileId {
    uint64_t dev, ino;
    bool operator==(const FileId &o) const noexcept { return dev == o.dev && ino == o.ino; }
};
Status shm_open_locked(const ShmPath &p, unsigned mode, int *fd, uint64_t *size, uint32_t *uid,
                       uint32_t *file_mode, FileId *id = nullptr) noexcept;
void shm_unlock_close(int fd) noexcept;
// Takes and gives back the exclusive lock of an open segment file.
void shm_lock(int fd) noexcept;
void shm_unlock(int fd) noexcept;
void fd_close_quiet(int fd) noexcept;
Status shm_resize(int fd, uint64_t size) noexcept;  // kNoMemory when the space is not there
Status shm_map(int fd, uint64_t size, void **out) noexcept;
void shm_unmap(void *p, uint64_t size) noexcept;
void shm_unlink(const ShmPath &p) noexcept;
uint32_t effective_uid() noexcept;

// This process: its pid and its start time (clock ticks since boot, from
// /proc/self/stat), which together name one process for good: a pid is
// reused, the pair is not.
uint32_t process_id() noexcept;
uint64_t process_start_time(uint32_t pid) noexcept;  // 0 when the process is gone

// A pidfd for the process (pid, start_time): readable once it exits.  -1
// when it is already gone or is another process now (pid reused).
int process_watch(uint32_t pid, uint64_t start_time) noexcept;
// Whether a process watched by pidfd has exited (a poll that never waits).
bool process_exited(int pidfd) noexcept;
// Whether (pid, start_time) is alive, without a descriptor.
bool process_alive(uint32_t pid, uint64_t start_time) noexcept;
// 0: no process runs with that pid (none has it, or it is a zombie that
// exited); 1: *start_time is its start time; -1: it exists but its start
// time could not be read (no /proc, no descriptor left): the caller cannot
// tell whether it is the process it knew.
int process_identity(uint32_t pid, uint64_t *start_time) noexcept;

// Doorbells: a FIFO at path, opened by its owner for reading (kept open
// read-write, so it never sees end-of-file), rung by anyone by writing a
// byte.  ring returns false when nobody listens (the owner is gone).
int bell_create(const std::string &path) noexcept;  // -1 on failure
bool bell_ring(const std::string &path) noexcept;
void bell_drain(int fd) noexcept;
void bell_remove(const std::string &path) noexcept;

// A doorbell an event loop can reach with nothing but a stream socket
// connection (OpenResty's cosockets): a listening Unix socket at path,
// non-blocking; accept gives a non-blocking connection or -1.  -1 on
// failure (the path is too long for a socket address, say).
int door_listen(const std::string &path) noexcept;
int door_accept(int listener) noexcept;
// Reads exactly n bytes if they are all there: 1 read them, 0 not yet
// (come back), -1 the peer went away or sent garbage.
int door_read(int fd, void *buf, std::size_t n) noexcept;
void door_answer(int fd) noexcept;  // one byte, then close

// An epoll set: add/remove descriptors (data: what wait reports), wait
// with a timeout (< 0: forever); fills up to n ready data words.
int poller_create() noexcept;
bool poller_add(int ep, int fd, uint64_t data) noexcept;
void poller_remove(int ep, int fd) noexcept;
int poller_wait(int ep, uint64_t *ready, int n, int timeout_ms) noexcept;

// 64 random bits from the kernel (a segment's identity).
uint64_t random64() noexcept;
// A number for the calling thread, unique in the process (not its kernel id):
// the thread's serial (core/thread.hpp), one load off the thread pointer.
// gettid(2) would do, but as a system call it cost about 330 ns, more than
// half of an uncontended shared call, and a function-local thread_local went
// through __tls_get_addr.  A forked child's thread keeps its parent thread's
// number: the child is another process of the group.
inline uint32_t thread_id() noexcept { return uint32_t(thread_serial()); }

}  // namespace detail
}  // namespace sf
