/* A minimal bulk client, independent of upecho's own generator: one TCP connection, one thread
 * writing SIZE-byte blocks with blocking write() as fast as the socket takes them (no window: the
 * kernel's buffers are the only limit), and one thread reading with blocking read() of up to
 * 256 KiB, checking every byte against the upper-cased pattern it sent.
 *
 *   bulk_client HOST PORT SIZE WARMUP SECONDS SERVER_PID
 *
 * After WARMUP seconds it measures for SECONDS (the server's utime + stime from /proc, and its
 * own, at the two ends of the window), then stops and prints one line:
 * `bytes N secs S server_ticks T client_ticks C hz H` (reply bytes read and checked in the
 * window). Any wrong byte or early close prints a message and exits 1. The bench compiles it with
 * the system `cc` at run time (benches/e2e.rs, scenario `bulkc`). */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define PERIOD 4096
#define READ_MAX (256 * 1024)

static int fd;
static size_t size;
static atomic_int stop;
static unsigned char *pattern; /* lower-case, repeating every PERIOD bytes; SIZE + PERIOD long */

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec / 1e9;
}

/* utime + stime of process `pid` in clock ticks, or -1. */
static long long ticks(const char *pid) {
    char path[64], line[1024];
    snprintf(path, sizeof path, "/proc/%s/stat", pid);
    FILE *f = fopen(path, "r");
    if (!f) return -1;
    size_t n = fread(line, 1, sizeof line - 1, f);
    fclose(f);
    line[n] = 0;
    char *p = strrchr(line, ')');
    unsigned long long ut, st;
    /* After ")": state ppid pgrp session tty tpgid flags minflt cminflt majflt cmajflt utime stime */
    if (!p || sscanf(p + 2, "%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %llu %llu", &ut, &st) != 2)
        return -1;
    return (long long)(ut + st);
}

static double own_secs(void) {
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return ru.ru_utime.tv_sec + ru.ru_stime.tv_sec + (ru.ru_utime.tv_usec + ru.ru_stime.tv_usec) / 1e6;
}

static void *writer(void *arg) {
    (void)arg;
    unsigned long long tx = 0;
    while (!atomic_load(&stop)) {
        ssize_t w = write(fd, pattern + tx % PERIOD, size);
        if (w <= 0) {
            if (atomic_load(&stop)) break;
            perror("bulk_client: write");
            exit(1);
        }
        tx += (unsigned long long)w;
    }
    return NULL;
}

int main(int argc, char **argv) {
    if (argc != 7) {
        fprintf(stderr, "usage: bulk_client HOST PORT SIZE WARMUP SECONDS SERVER_PID\n");
        return 2;
    }
    size = strtoul(argv[3], NULL, 10);
    double warm = atof(argv[4]), secs = atof(argv[5]);
    const char *pid = argv[6];
    if (size == 0 || size > (64u << 20) || !(warm >= 0) || !(secs > 0) || ticks(pid) < 0) {
        fprintf(stderr, "bulk_client: bad SIZE, WARMUP, SECONDS or SERVER_PID\n");
        return 2;
    }
    pattern = malloc(size + PERIOD);
    unsigned char *upper = malloc(READ_MAX + PERIOD);
    unsigned char *buf = malloc(READ_MAX);
    if (!pattern || !upper || !buf) return 1;
    for (size_t i = 0; i < size + PERIOD; i++) pattern[i] = 'a' + ((i % PERIOD) * 7 + (i % PERIOD) / 26) % 26;
    for (size_t i = 0; i < READ_MAX + PERIOD; i++) upper[i] = pattern[i % PERIOD] - 'a' + 'A';

    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons(atoi(argv[2]))};
    if (inet_pton(AF_INET, argv[1], &sa.sin_addr) != 1) {
        fprintf(stderr, "bulk_client: bad HOST\n");
        return 2;
    }
    fd = socket(AF_INET, SOCK_STREAM, 0);
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    if (connect(fd, (struct sockaddr *)&sa, sizeof sa) != 0) {
        perror("bulk_client: connect");
        return 1;
    }
    /* The reader can never be stuck for long: the writer keeps the stream going. */
    struct timeval tv = {.tv_sec = 5};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    pthread_t w;
    pthread_create(&w, NULL, writer, NULL);

    double t0 = now(), start = t0 + warm, end = start + secs;
    unsigned long long rx = 0, rx0 = 0;
    long long s0 = -1;
    double c0 = 0;
    for (double t = t0; t < end; t = now()) {
        if (s0 < 0 && t >= start) {
            start = t;
            rx0 = rx;
            s0 = ticks(pid);
            c0 = own_secs();
        }
        ssize_t r = read(fd, buf, READ_MAX);
        if (r <= 0) {
            fprintf(stderr, "bulk_client: read: %s\n", r == 0 ? "server closed" : "failed or timed out");
            return 1;
        }
        if (memcmp(buf, upper + rx % PERIOD, (size_t)r) != 0) {
            fprintf(stderr, "bulk_client: wrong reply bytes after %llu\n", rx);
            return 1;
        }
        rx += (unsigned long long)r;
    }
    double took = now() - start;
    long long s1 = ticks(pid);
    double c1 = own_secs();
    atomic_store(&stop, 1);
    long hz = sysconf(_SC_CLK_TCK);
    printf("bytes %llu secs %.6f server_ticks %lld client_ticks %.0f hz %ld\n", rx - rx0, took,
           s1 - s0, (c1 - c0) * hz, hz);
    fflush(stdout);
    /* The writer may be blocked in write(): exiting ends it; the server sees the reset. */
    _exit(0);
}
