#include "core/platform_shm.hpp"

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/epoll.h>
#include <sys/file.h>
#include <sys/mman.h>
#include <sys/random.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>

#include "core/platform.hpp"

#ifndef SYS_pidfd_open
#define SYS_pidfd_open 434
#endif

namespace sf {
namespace detail {

namespace {
bool name_char(char c) noexcept {
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '.' ||
           c == '_' || c == '-';
}

Status from_errno(int e) noexcept {
    switch (e) {
        case EACCES:
        case EPERM:
        case EROFS:
            return kPermission;
        case ENOMEM:
        case ENOSPC:
        case EFBIG:
        case EMFILE:
        case ENFILE:
            return kNoMemory;
        case ENOENT:
        case ENOTDIR:
        case ENAMETOOLONG:
        case ELOOP:
        case EISDIR:
            return kInvalid;
        default:
            return kInvalid;
    }
}

int retry_open(const char *path, int flags, unsigned mode) noexcept {
    int fd;
    do {
        fd = open(path, flags, mode);
    } while (fd < 0 && errno == EINTR);
    return fd;
}
}  // namespace

Status shm_path_for_name(const char *name, ShmPath *out) noexcept {
    if (!name) return kInvalid;
    const std::size_t n = std::strlen(name);
    if (n == 0 || n > 200 || name[0] == '.') return kInvalid;
    for (std::size_t i = 0; i < n; ++i)
        if (!name_char(name[i])) return kInvalid;
    try {
        out->shm = std::string("/libsingleflight.") + name;
        out->path = "/dev/shm" + out->shm;
    } catch (...) {
        return kNoMemory;
    }
    return kOk;
}

Status shm_open_locked(const ShmPath &p, unsigned mode, int *fd_out, uint64_t *size, uint32_t *uid,
                       uint32_t *file_mode, FileId *id) noexcept {
    NoCancel no_cancel;  // open, flock and close are (or may be) cancellation points
    for (int attempt = 0; attempt < 100; ++attempt) {
        // O_NOFOLLOW: a symlink planted at the path must not redirect us.
        // shm_open is open(2) on /dev/shm on Linux; one path for both kinds.
        const int fd = retry_open(p.path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW, mode);
        if (fd < 0) return from_errno(errno);
        int rc;
        do {
            rc = flock(fd, LOCK_EX);
        } while (rc < 0 && errno == EINTR);
        struct stat a, b;
        if (rc < 0 || fstat(fd, &a) < 0) {
            const Status st = from_errno(errno);
            close(fd);
            return st;
        }
        // A closer that unlinked the file while we waited for the lock
        // leaves us holding a file nobody else will ever open: start over.
        if (stat(p.path.c_str(), &b) < 0 || a.st_ino != b.st_ino || a.st_dev != b.st_dev) {
            close(fd);
            continue;
        }
        if (!S_ISREG(a.st_mode)) {
            close(fd);
            return kInvalid;
        }
        *fd_out = fd;
        *size = uint64_t(a.st_size);
        *uid = uint32_t(a.st_uid);
        *file_mode = uint32_t(a.st_mode & 07777);
        if (id) *id = FileId{uint64_t(a.st_dev), uint64_t(a.st_ino)};
        return kOk;
    }
    return kBusy;
}

void shm_lock(int fd) noexcept {
    NoCancel no_cancel;
    int rc;
    do {
        rc = flock(fd, LOCK_EX);
    } while (rc < 0 && errno == EINTR);
}

void shm_unlock(int fd) noexcept { flock(fd, LOCK_UN); }

void fd_close_quiet(int fd) noexcept {
    if (fd < 0) return;
    NoCancel no_cancel;
    close(fd);
}

void shm_unlock_close(int fd) noexcept {
    if (fd < 0) return;
    NoCancel no_cancel;
    flock(fd, LOCK_UN);
    close(fd);
}

Status shm_resize(int fd, uint64_t size) noexcept {
    // posix_fallocate, not ftruncate alone: a tmpfs short of space then
    // fails here with ENOSPC instead of SIGBUS at the first touch.
    if (ftruncate(fd, off_t(size)) < 0) return from_errno(errno);
    const int rc = posix_fallocate(fd, 0, off_t(size));
    if (rc != 0 && rc != EOPNOTSUPP && rc != EINVAL) return from_errno(rc);
    return kOk;
}

Status shm_map(int fd, uint64_t size, void **out) noexcept {
    void *p = mmap(nullptr, size_t(size), PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (p == MAP_FAILED) return from_errno(errno);
    *out = p;
    return kOk;
}

void shm_unmap(void *p, uint64_t size) noexcept {
    if (p) munmap(p, size_t(size));
}

void shm_unlink(const ShmPath &p) noexcept { unlink(p.path.c_str()); }

uint32_t effective_uid() noexcept { return uint32_t(geteuid()); }

uint32_t process_id() noexcept { return uint32_t(getpid()); }

// Reads /proc/<pid>/stat: the process's state letter and its start time
// (field 22).  false when it cannot be read.
static bool read_stat(uint32_t pid, char *state, uint64_t *start) noexcept {
    char path[64];
    std::snprintf(path, sizeof path, "/proc/%u/stat", pid);
    NoCancel no_cancel;
    const int fd = retry_open(path, O_RDONLY | O_CLOEXEC, 0);
    if (fd < 0) return false;
    char buf[1024];
    ssize_t n;
    do {
        n = read(fd, buf, sizeof buf - 1);
    } while (n < 0 && errno == EINTR);
    close(fd);
    if (n <= 0) return false;
    buf[n] = 0;
    // Fields counted after the command's closing paren, which may itself
    // contain spaces and parens: " S ..." is field 3, the state.
    const char *p = std::strrchr(buf, ')');
    if (!p || p[1] != ' ' || !p[2]) return false;
    *state = p[2];
    int field = 2;
    for (++p; *p && field < 22; ++p)
        if (*p == ' ') ++field;
    *start = std::strtoull(p, nullptr, 10);
    return true;
}

uint64_t process_start_time(uint32_t pid) noexcept {
    char state = 0;
    uint64_t start = 0;
    return read_stat(pid, &state, &start) ? start : 0;
}

int process_watch(uint32_t pid, uint64_t start_time) noexcept {
    const int fd = int(syscall(SYS_pidfd_open, pid_t(pid), 0));
    if (fd < 0) return -1;
    // The pidfd names whatever process has this pid now: it is ours only
    // if that process started when ours did.
    if (process_start_time(pid) != start_time || process_exited(fd)) {
        close(fd);
        return -1;
    }
    fcntl(fd, F_SETFD, FD_CLOEXEC);
    return fd;
}

bool process_exited(int pidfd) noexcept {
    struct pollfd p = {pidfd, POLLIN, 0};
    int rc;
    do {
        rc = poll(&p, 1, 0);
    } while (rc < 0 && errno == EINTR);
    return rc > 0;
}

int process_identity(uint32_t pid, uint64_t *start_time) noexcept {
    if (pid == 0 || (kill(pid_t(pid), 0) < 0 && errno == ESRCH)) return 0;
    char state = 0;
    if (!read_stat(pid, &state, start_time)) return -1;
    // A zombie has exited: it holds nothing any more, though its pid and
    // start time stay until its parent reaps it.
    return state == 'Z' || state == 'X' ? 0 : 1;
}

bool process_alive(uint32_t pid, uint64_t start_time) noexcept {
    if (pid == 0) return false;
    if (kill(pid_t(pid), 0) < 0 && errno == ESRCH) return false;
    return process_start_time(pid) == start_time;
}

int bell_create(const std::string &path) noexcept {
    NoCancel no_cancel;
    unlink(path.c_str());  // a dead owner's leftover of the same name
    if (mkfifo(path.c_str(), 0600) < 0) return -1;
    // Read-write: the owner is then also a writer, so the FIFO never reads
    // end-of-file between two rings, and opening it never blocks.
    const int fd = retry_open(path.c_str(), O_RDWR | O_NONBLOCK | O_CLOEXEC, 0);
    if (fd < 0) unlink(path.c_str());
    return fd;
}

bool bell_ring(const std::string &path) noexcept {
    NoCancel no_cancel;
    // O_NONBLOCK: ENXIO at once when no reader holds it open (its owner
    // died), never a hang.
    const int fd = retry_open(path.c_str(), O_WRONLY | O_NONBLOCK | O_CLOEXEC, 0);
    if (fd < 0) return false;
    const char one = 1;
    ssize_t rc;
    do {
        rc = write(fd, &one, 1);
    } while (rc < 0 && errno == EINTR);
    close(fd);
    // EAGAIN: the pipe is full of rings already, which is as good.
    return rc == 1 || errno == EAGAIN;
}

void bell_drain(int fd) noexcept {
    char buf[256];
    while (read(fd, buf, sizeof buf) > 0) {}
}

void bell_remove(const std::string &path) noexcept { unlink(path.c_str()); }

int door_listen(const std::string &path) noexcept {
    struct sockaddr_un a;
    std::memset(&a, 0, sizeof a);
    if (path.size() >= sizeof a.sun_path) return -1;
    a.sun_family = AF_UNIX;
    std::memcpy(a.sun_path, path.c_str(), path.size() + 1);
    NoCancel no_cancel;
    const int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) return -1;
    unlink(path.c_str());  // a dead owner's leftover of the same name
    if (bind(fd, reinterpret_cast<struct sockaddr *>(&a), sizeof a) < 0 ||
        chmod(path.c_str(), 0600) < 0 || listen(fd, 128) < 0) {
        close(fd);
        unlink(path.c_str());
        return -1;
    }
    return fd;
}

int door_accept(int listener) noexcept {
    int fd;
    do {
        fd = accept4(listener, nullptr, nullptr, SOCK_NONBLOCK | SOCK_CLOEXEC);
    } while (fd < 0 && errno == EINTR);
    return fd;
}

int door_read(int fd, void *buf, std::size_t n) noexcept {
    ssize_t got;
    do {
        got = recv(fd, buf, n, MSG_PEEK);
    } while (got < 0 && errno == EINTR);
    if (got == 0) return -1;  // closed before it said anything
    if (got < 0) return errno == EAGAIN || errno == EWOULDBLOCK ? 0 : -1;
    if (std::size_t(got) < n) return 0;
    do {
        got = recv(fd, buf, n, 0);
    } while (got < 0 && errno == EINTR);
    return std::size_t(got) == n ? 1 : -1;
}

void door_answer(int fd) noexcept {
    NoCancel no_cancel;
    const char one = 1;
    ssize_t rc;
    do {
        rc = send(fd, &one, 1, MSG_NOSIGNAL);
    } while (rc < 0 && errno == EINTR);
    close(fd);
}

int poller_create() noexcept { return epoll_create1(EPOLL_CLOEXEC); }

bool poller_add(int ep, int fd, uint64_t data) noexcept {
    struct epoll_event ev;
    std::memset(&ev, 0, sizeof ev);
    ev.events = EPOLLIN;
    ev.data.u64 = data;
    return epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev) == 0;
}

void poller_remove(int ep, int fd) noexcept { epoll_ctl(ep, EPOLL_CTL_DEL, fd, nullptr); }

int poller_wait(int ep, uint64_t *ready, int n, int timeout_ms) noexcept {
    struct epoll_event evs[32];
    if (n > 32) n = 32;
    int got;
    do {
        got = epoll_wait(ep, evs, n, timeout_ms);
    } while (got < 0 && errno == EINTR);
    for (int i = 0; i < got; ++i) ready[i] = evs[i].data.u64;
    return got < 0 ? 0 : got;
}

uint64_t random64() noexcept {
    uint64_t v = 0;
    if (getrandom(&v, sizeof v, 0) != ssize_t(sizeof v))
        v = uint64_t(now_ns()) ^ uint64_t(getpid()) << 32;
    return v;
}

}  // namespace detail
}  // namespace sf
