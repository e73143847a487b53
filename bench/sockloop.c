/* bench P3: socket(AF_INET, SOCK_STREAM, 0) + close() in a loop, and a
 * UDP send loop (every datagram passes the cgroup's egress program).
 *
 * Reads a count per line on stdin, runs that many create+close pairs,
 * prints the elapsed nanoseconds (CLOCK_MONOTONIC). A line "udp N ADDR"
 * opens one UDP socket here (in the current cgroup), sends N 64-byte
 * datagrams to ADDR port 9, closes it and prints the nanoseconds. A line "check" prints
 * the device the next TCP socket is bound to and whether UDP is refused,
 * so the bench can see the program it measures is really in effect. A line
 * "cg DIR" moves this process into cgroup DIR (root) and prints "ok". */
#include <arpa/inet.h>
#include <errno.h>
#include <net/if.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

static long long now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

int main(void)
{
    char line[4200];
    setvbuf(stdout, NULL, _IOLBF, 0);
    while (fgets(line, sizeof line, stdin)) {
        if (strncmp(line, "cg ", 3) == 0) {
            char path[4300];
            FILE *f;
            line[strcspn(line, "\n")] = '\0';
            snprintf(path, sizeof path, "%s/cgroup.procs", line + 3);
            f = fopen(path, "w");
            if (!f || fprintf(f, "%d", (int)getpid()) < 0 || fclose(f) != 0) {
                printf("error cg %d\n", errno);
                continue;
            }
            printf("ok\n");
            continue;
        }
        if (strncmp(line, "check", 5) == 0) {
            char dev[IFNAMSIZ] = "";
            socklen_t len = sizeof dev;
            int s = socket(AF_INET, SOCK_STREAM, 0);
            if (s < 0 || getsockopt(s, SOL_SOCKET, SO_BINDTODEVICE, dev, &len) < 0)
                dev[0] = '?';
            if (s >= 0)
                close(s);
            int u = socket(AF_INET, SOCK_DGRAM, 0);
            int udp_errno = u < 0 ? errno : 0;
            if (u >= 0)
                close(u);
            printf("%s %d\n", dev[0] ? dev : "-", udp_errno);
            continue;
        }
        if (strncmp(line, "udp ", 4) == 0) {
            char addr[64] = "";
            long n = 0;
            struct sockaddr_in to = {.sin_family = AF_INET, .sin_port = htons(9)};
            char payload[64] = {0};
            if (sscanf(line + 4, "%ld %63s", &n, addr) != 2 || inet_pton(AF_INET, addr, &to.sin_addr) != 1) {
                printf("error udp arguments\n");
                continue;
            }
            int u = socket(AF_INET, SOCK_DGRAM, 0);
            if (u < 0) {
                printf("error %d\n", errno);
                continue;
            }
            int failed = 0;
            long long t0 = now_ns();
            for (long i = 0; i < n && !failed; i++)
                failed = sendto(u, payload, sizeof payload, 0, (struct sockaddr *)&to, sizeof to) < 0
                         && errno != ENOBUFS ? errno : 0;
            long long spent = now_ns() - t0;
            close(u);
            if (failed)
                printf("error %d\n", failed);
            else
                printf("%lld\n", spent);
            continue;
        }
        long n = atol(line);
        long long t0 = now_ns();
        for (long i = 0; i < n; i++) {
            int s = socket(AF_INET, SOCK_STREAM, 0);
            if (s < 0) {
                printf("error %d\n", errno);
                goto next;
            }
            close(s);
        }
        printf("%lld\n", now_ns() - t0);
next:;
    }
    return 0;
}
