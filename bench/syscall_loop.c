/*
 * Per-syscall cost probe for `cargo xtask bench`.
 *
 * Times a tight loop of small write()/read() pairs and prints the mean
 * nanoseconds per syscall, both of the thread's CPU time (what the syscalls
 * and the eBPF programs running inside them cost; immune to the thread being
 * preempted by the agent or anything else) and of wall-clock time. The harness runs it with no eBPF
 * program attached, with empty programs on the same tracepoints waggle uses,
 * and with waggle; the differences are the cost each adds per syscall.
 *
 * Modes:
 *   unix      socketpair(AF_UNIX): waggle's programs run but drop the event
 *             at the first filter (not TCP): the cost every untraced I/O pays.
 *   tcp-raw   loopback TCP pair opened after the agent started, binary
 *             payload: tracked, then muted once userspace sees no protocol.
 *   tcp-http  loopback TCP pair carrying HTTP/1.1 request/response pairs:
 *             every syscall's payload is captured and parsed into spans.
 *
 * The process pins itself to one CPU so the agent's userspace work lands on
 * the other core instead of interleaving with the loop.
 *
 * Usage: syscall_loop MODE ITERATIONS [CPU]
 * Output (one line):
 *   mode=M syscalls=N elapsed_ns=T ns_per_syscall=X cpu_ns_per_syscall=Y
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

static const char HTTP_REQ[] = "GET /loop HTTP/1.1\r\nHost: bench\r\n\r\n";
static const char HTTP_RESP[] = "HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n";

static long long clock_ns(clockid_t clock) {
    struct timespec ts;
    clock_gettime(clock, &ts);
    return (long long)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

static long long now_ns(void) { return clock_ns(CLOCK_MONOTONIC); }
static long long cpu_ns(void) { return clock_ns(CLOCK_THREAD_CPUTIME_ID); }

static void die(const char *what) {
    fprintf(stderr, "syscall_loop: %s: %s\n", what, strerror(errno));
    exit(1);
}

/* Writes all of buf or dies: a short write would desynchronise the loop. */
static void put(int fd, const char *buf, size_t len) {
    ssize_t n = write(fd, buf, len);
    if (n != (ssize_t)len) die("write");
}

/* Reads exactly len bytes (loopback may split nothing here, but be exact). */
static void get(int fd, char *buf, size_t len) {
    size_t got = 0;
    while (got < len) {
        ssize_t n = read(fd, buf + got, len - got);
        if (n <= 0) die("read");
        got += (size_t)n;
    }
}

static void tcp_pair(int fds[2]) {
    int lst = socket(AF_INET, SOCK_STREAM, 0);
    if (lst < 0) die("socket");
    struct sockaddr_in addr = {.sin_family = AF_INET, .sin_port = 0};
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (bind(lst, (struct sockaddr *)&addr, sizeof addr) < 0) die("bind");
    if (listen(lst, 1) < 0) die("listen");
    socklen_t alen = sizeof addr;
    if (getsockname(lst, (struct sockaddr *)&addr, &alen) < 0) die("getsockname");
    int cli = socket(AF_INET, SOCK_STREAM, 0);
    if (cli < 0) die("socket");
    if (connect(cli, (struct sockaddr *)&addr, sizeof addr) < 0) die("connect");
    int srv = accept(lst, NULL, NULL);
    if (srv < 0) die("accept");
    int one = 1;
    setsockopt(cli, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    setsockopt(srv, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    close(lst);
    fds[0] = cli;
    fds[1] = srv;
}

int main(int argc, char **argv) {
    if (argc < 3) {
        fprintf(stderr, "usage: %s unix|tcp-raw|tcp-http ITERATIONS [CPU]\n", argv[0]);
        return 2;
    }
    const char *mode = argv[1];
    long iterations = atol(argv[2]);
    if (iterations <= 0) {
        fprintf(stderr, "syscall_loop: ITERATIONS must be positive\n");
        return 2;
    }
    if (argc > 3) {
        cpu_set_t set;
        CPU_ZERO(&set);
        CPU_SET(atoi(argv[3]), &set);
        if (sched_setaffinity(0, sizeof set, &set) < 0) die("sched_setaffinity");
    }

    int fds[2];
    char buf[256];
    long long syscalls = 0, start, elapsed, cpu_start, cpu;
    if (strcmp(mode, "unix") == 0 || strcmp(mode, "tcp-raw") == 0) {
        if (mode[0] == 'u') {
            if (socketpair(AF_UNIX, SOCK_STREAM, 0, fds) < 0) die("socketpair");
        } else {
            tcp_pair(fds);
        }
        char payload[64];
        memset(payload, 0xa5, sizeof payload);
        /* Warm-up: caches, and for tcp-raw the agent's verdict (mute). */
        for (int i = 0; i < 1000; i++) {
            put(fds[0], payload, sizeof payload);
            get(fds[1], buf, sizeof payload);
        }
        usleep(200000);
        cpu_start = cpu_ns();
        start = now_ns();
        for (long i = 0; i < iterations; i++) {
            put(fds[0], payload, sizeof payload);
            get(fds[1], buf, sizeof payload);
        }
        elapsed = now_ns() - start;
        cpu = cpu_ns() - cpu_start;
        syscalls = 2LL * iterations;
    } else if (strcmp(mode, "tcp-http") == 0) {
        tcp_pair(fds);
        size_t req = sizeof HTTP_REQ - 1, resp = sizeof HTTP_RESP - 1;
        for (int i = 0; i < 1000; i++) {
            put(fds[0], HTTP_REQ, req);
            get(fds[1], buf, req);
            put(fds[1], HTTP_RESP, resp);
            get(fds[0], buf, resp);
        }
        cpu_start = cpu_ns();
        start = now_ns();
        for (long i = 0; i < iterations; i++) {
            put(fds[0], HTTP_REQ, req);
            get(fds[1], buf, req);
            put(fds[1], HTTP_RESP, resp);
            get(fds[0], buf, resp);
        }
        elapsed = now_ns() - start;
        cpu = cpu_ns() - cpu_start;
        syscalls = 4LL * iterations;
    } else {
        fprintf(stderr, "syscall_loop: unknown mode %s\n", mode);
        return 2;
    }
    printf("mode=%s syscalls=%lld elapsed_ns=%lld ns_per_syscall=%.1f cpu_ns_per_syscall=%.1f\n", mode, syscalls,
           elapsed, (double)elapsed / (double)syscalls, (double)cpu / (double)syscalls);
    return 0;
}
