/* bench P5: many sessions, each a process placed through the helper's `open`.
 *
 *   spawn_sessions ROOT_SOCK USER SERVICE DIR
 *
 * stdin commands:
 *   spawn K   make K more sessions, one after the other: for session N,
 *             mkdir DIR/s-N, clone3(CLONE_INTO_CGROUP) a child born in it
 *             (no migration of its own), and the child sends
 *             {"v":2,"op":"open","user":USER,"service":SERVICE} on ROOT_SOCK
 *             with a pidfd of itself, as pam_vrf.so does; the helper decides
 *             and moves it into DIR/s-N/<netns>-ns/vrf/TARGET. The child then
 *             sleeps (blocks on a pipe) until this program ends. Prints one
 *             line per session: "N OPEN_NS TOTAL_NS MKDIR_NS CLONE_NS VERDICT"
 *             (the child's round trip; mkdir to reply as seen here; mkdir
 *             and clone3 alone), then "ok".
 *   EOF       (or "exit") close the pipe: every child exits; wait for all of
 *             them, then exit. A parent killed with SIGKILL closes the pipe too.
 * Children are reaped automatically (SIGCHLD ignored): none is left a zombie.
 *
 * A placed child execs this program again (`spawn_sessions --hold FD`) to
 * sleep: with a fresh address space it no longer shares the
 * spawner's pages. Otherwise 10 000 children of one parent share its
 * anonymous pages, and fork() itself (anon_vma chains) and every reverse-map
 * walk of those pages (DAMON's kdamond runs on this host) grow with the
 * number of sessions: clone3 went from 0.1 to 4 ms per session here, a cost
 * of the bench's one-parent shape that no real login has.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/sched.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/types.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

struct result { int32_t n; int32_t pad; int64_t ns; char verdict[48]; };

static int hold[2], results[2];

static int64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

static void child(int n, const struct sockaddr_un *addr, const char *request)
{
    struct result r = { .n = n };
    char reply[4097], control[CMSG_SPACE(sizeof(int))];
    struct iovec iov = { (void *)request, strlen(request) };
    struct msghdr msg = { .msg_iov = &iov, .msg_iovlen = 1, .msg_control = control,
                          .msg_controllen = sizeof(control) };
    struct cmsghdr *c;
    int64_t t0;
    ssize_t got = -1;
    int fd, pidfd;
    char b;

    close(hold[1]);
    close(results[0]);
    close(0);                           /* the bench's pipes are the spawner's alone */
    close(1);
    t0 = now_ns();
    fd = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);
    pidfd = (int)syscall(SYS_pidfd_open, getpid(), 0);
    memset(control, 0, sizeof(control));
    c = CMSG_FIRSTHDR(&msg);
    c->cmsg_level = SOL_SOCKET;
    c->cmsg_type = SCM_RIGHTS;
    c->cmsg_len = CMSG_LEN(sizeof(int));
    memcpy(CMSG_DATA(c), &pidfd, sizeof(int));
    if (fd >= 0 && pidfd >= 0 && connect(fd, (const struct sockaddr *)addr, sizeof(*addr)) == 0
        && sendmsg(fd, &msg, MSG_NOSIGNAL) >= 0)
        got = recv(fd, reply, sizeof(reply) - 1, 0);
    r.ns = now_ns() - t0;
    if (got > 0) {
        const char *v;
        reply[got] = '\0';
        v = strstr(reply, "\"verdict\":\"");
        if (v) {
            size_t i = 0;
            v += strlen("\"verdict\":\"");
            while (v[i] && v[i] != '"' && i < sizeof(r.verdict) - 1) { r.verdict[i] = v[i]; i++; }
        } else {
            snprintf(r.verdict, sizeof(r.verdict), "no-verdict:%.30s", reply);
        }
    } else {
        snprintf(r.verdict, sizeof(r.verdict), "error:%d", errno);
    }
    for (char *p = r.verdict; *p; p++) if (*p == ' ' || *p == '\n') *p = '_';
    if (fd >= 0) close(fd);
    if (pidfd >= 0) close(pidfd);
    if (write(results[1], &r, sizeof(r)) != (ssize_t)sizeof(r)) _exit(1);
    close(results[1]);
    if (fcntl(hold[0], F_SETFD, 0) == 0) {      /* the pipe stays open across exec */
        char fd[16];
        char *const args[] = { (char *)"spawn_sessions", (char *)"--hold", fd, NULL };
        snprintf(fd, sizeof(fd), "%d", hold[0]);
        execv("/proc/self/exe", args);
    }
    while (read(hold[0], &b, 1) < 0 && errno == EINTR)
        ;                               /* exec failed: sleep here instead */
    _exit(0);
}

/* A session after exec: sleep until the pipe (fd given) reaches EOF. */
static int hold_on(int fd)
{
    char b;

    while (read(fd, &b, 1) < 0 && errno == EINTR)
        ;
    return 0;
}

int main(int argc, char **argv)
{
    struct sockaddr_un addr = { .sun_family = AF_UNIX };
    char request[1024], line[128], dir[4096];
    int next = 0;

    if (argc == 3 && strcmp(argv[1], "--hold") == 0)
        return hold_on(atoi(argv[2]));
    if (argc != 5) {
        fprintf(stderr, "usage: %s ROOT_SOCK USER SERVICE DIR\n", argv[0]);
        return 2;
    }
    setvbuf(stdout, NULL, _IOLBF, 0);
    snprintf(addr.sun_path, sizeof(addr.sun_path), "%s", argv[1]);
    snprintf(request, sizeof(request), "{\"v\":2,\"op\":\"open\",\"user\":\"%s\",\"service\":\"%s\"}",
             argv[2], argv[3]);
    signal(SIGCHLD, SIG_IGN);
    if (pipe2(hold, O_CLOEXEC) < 0 || pipe2(results, O_CLOEXEC) < 0) {
        perror("pipe");
        return 1;
    }
    while (fgets(line, sizeof(line), stdin)) {
        int k;
        if (sscanf(line, "spawn %d", &k) != 1)
            break;
        for (int i = 0; i < k; i++, next++) {
            struct clone_args args;
            struct result r;
            int64_t t0 = now_ns();
            pid_t pid;
            int cg;

            int64_t t_mkdir, t_clone;

            snprintf(dir, sizeof(dir), "%s/s-%d", argv[4], next);
            if (mkdir(dir, 0755) < 0 && errno != EEXIST) {
                printf("error mkdir %s: %s\n", dir, strerror(errno));
                return 1;
            }
            cg = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
            if (cg < 0) {
                printf("error open %s: %s\n", dir, strerror(errno));
                return 1;
            }
            t_mkdir = now_ns();
            memset(&args, 0, sizeof(args));
            args.flags = CLONE_INTO_CGROUP;
            args.exit_signal = SIGCHLD;
            args.cgroup = (uint64_t)cg;
            pid = (pid_t)syscall(SYS_clone3, &args, sizeof(args));
            if (pid == 0)
                child(next, &addr, request);
            t_clone = now_ns();
            close(cg);
            if (pid < 0) {
                printf("error clone3: %s\n", strerror(errno));
                return 1;
            }
            if (read(results[0], &r, sizeof(r)) != (ssize_t)sizeof(r)) {
                printf("error: no result from session %d\n", next);
                return 1;
            }
            printf("%d %lld %lld %lld %lld %s\n", r.n, (long long)r.ns, (long long)(now_ns() - t0),
                   (long long)(t_mkdir - t0), (long long)(t_clone - t_mkdir), r.verdict[0] ? r.verdict : "?");
        }
        printf("ok\n");
    }
    close(hold[1]);                     /* every child reads EOF and exits */
    while (wait(NULL) > 0 || errno == EINTR)
        ;                               /* SIGCHLD ignored: returns ECHILD once all are gone */
    return 0;
}
