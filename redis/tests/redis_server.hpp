// A redis-server of the caller's own on a free loopback port, for the
// tests and the benchmark: started with persistence off, ready once it
// answers PING, stopped by stop() (SIGCONT first: it may be paused).
#pragma once

#include <hiredis/hiredis.h>

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <string>

namespace sfredis_test {

int free_port() {
    int s = socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    bind(s, reinterpret_cast<sockaddr *>(&a), sizeof a);
    socklen_t l = sizeof a;
    getsockname(s, reinterpret_cast<sockaddr *>(&a), &l);
    close(s);
    return ntohs(a.sin_port);
}

// One server; start() again after stop() restarts it on the same port.
struct Server {
    int port = 0;
    pid_t pid = -1;

    // Returns false if it did not answer within 5 s.
    bool start(int p = 0) {
        port = p ? p : free_port();
        pid = fork();
        if (pid == 0) {
            int dn = open("/dev/null", O_RDWR);
            dup2(dn, 1);
            dup2(dn, 2);
            std::string ps = std::to_string(port);
            execl(SF_REDIS_SERVER, SF_REDIS_SERVER, "--port", ps.c_str(), "--bind", "127.0.0.1",
                  "--save", "", "--appendonly", "no", "--loglevel", "warning", (char *)nullptr);
            _exit(127);
        }
        // Ready when it answers PING (bounded).
        for (int i = 0; i < 500; i++) {
            redisContext *c = redisConnect("127.0.0.1", port);
            if (c && !c->err) {
                auto *r = static_cast<redisReply *>(redisCommand(c, "PING"));
                bool ok = r && r->type == REDIS_REPLY_STATUS;
                if (r) freeReplyObject(r);
                redisFree(c);
                if (ok) return true;
            } else if (c) {
                redisFree(c);
            }
            usleep(10000);
        }
        stop();  // never ready
        return false;
    }
    void stop() {
        if (pid > 0) {
            kill(pid, SIGCONT);
            kill(pid, SIGKILL);
            waitpid(pid, nullptr, 0);
        }
        pid = -1;
    }
};

}  // namespace sfredis_test
