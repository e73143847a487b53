/*
 * pam_vrf.so - session hook of pam-vrf: asks pam-vrf-helper to place the
 * PAM caller into its VRF (see pam_vrf/protocol.py for the wire protocol).
 *
 *   session [success=ok session_err=bad default=ignore] pam_vrf.so [config=PATH] [socket=PATH] [debug]
 *
 * A thin client with no policy of its own: one request on the helper's
 * root-only socket (with a pidfd of the caller, the process to move), one
 * reply. When the helper is absent or its answer unusable, the module does
 * not guess: it runs the offline decider (python3 -I -m pam_vrf.offline),
 * which refuses the session only under a strict rule. Anything broken on
 * that path returns PAM_IGNORE, so a bad install never locks anyone out.
 * Under su/sudo for a non-root invoker, who sets our limits and may stop
 * us, a helper that runs but gave no verdict refuses (not_answered).
 *
 * No global mutable state (callers may be multi-threaded); fixed buffers on
 * the stack, so there is nothing to free.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <syslog.h>
#include <time.h>
#include <unistd.h>
#include <sched.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/un.h>
#include <sys/wait.h>

#include <security/pam_modules.h>
#include <security/pam_ext.h>
#include <security/pam_modutil.h>
#include <pwd.h>

#ifndef PAM_VRF_PYTHON
#define PAM_VRF_PYTHON "/usr/bin/python3"
#endif
/* Shared with the Python side, which holds the other copy of each (named
 * beside it): tests/test_c_python_agree.py fails when the two differ. */
#define PROTOCOL_VERSION 2                          /* protocol.VERSION */
#define DEFAULT_SOCKET  "/run/pam-vrf/helper.sock"  /* protocol.DEFAULT_SOCKET */
#define ROOT_SOCKET     "root.sock"                 /* protocol.ROOT_SOCKET_NAME */
#define LOGIN_TIMEOUT   30      /* s, a busy or stopped helper is waited for (protocol.LOGIN_TIMEOUT) */
#define MAX_MESSAGE     4096    /* bytes, either direction (protocol.MAX_MESSAGE) */
#define MAX_NAME        256     /* characters, not bytes, in a user name (policy.MAX_NAME) */
#define IFNAMSIZ_MAX    15      /* bytes in a device name, as the kernel counts (netdev.IFNAMSIZ - 1) */
#define DEFAULT_CONFIG  "/etc/security/vrf.conf"    /* policy.DEFAULT_CONFIG */
/* The decider's one line on stdout (offline.VERDICT): an exit status alone
 * cannot tell a verdict from a crash (Python exits 1 on any uncaught error). */
#define VERDICT_PROCEED "pam_vrf.offline: proceed\n"
#define VERDICT_REFUSE  "pam_vrf.offline: refuse\n"
#define DECIDER_TIMEOUT 10      /* s: then the offline decider is killed (ours alone, as the next) */
#define MAX_CONFIG      (1 << 20)   /* bytes scanned for "strict" */
#define STR(x)  #x
#define XSTR(x) STR(x)

#define PUBLIC __attribute__((visibility("default")))

struct options { const char *config, *socket; int debug; };

/* The fields of a reply we use; strings point into the reply buffer. */
struct reply { int ok; long version; const char *verdict, *vrf, *rule, *error; };

/* Length of the valid UTF-8 sequence at s (1..4), 0 if invalid; *cp is its
 * code point. */
static size_t utf8_seq(const unsigned char *s, size_t n, unsigned int *cp)
{
    unsigned int c;
    size_t len, i;

    if (s[0] < 0x80) return *cp = s[0], 1;
    if (s[0] >= 0xc2 && s[0] <= 0xdf) { len = 2; c = s[0] & 0x1f; }
    else if (s[0] >= 0xe0 && s[0] <= 0xef) { len = 3; c = s[0] & 0x0f; }
    else if (s[0] >= 0xf0 && s[0] <= 0xf4) { len = 4; c = s[0] & 0x07; }
    else return 0;
    if (n < len) return 0;
    for (i = 1; i < len; i++) {
        if ((s[i] & 0xc0) != 0x80) return 0;
        c = (c << 6) | (s[i] & 0x3f);
    }
    /* overlong forms, UTF-16 surrogates, beyond U+10FFFF */
    if ((len == 3 && c < 0x800) || (len == 4 && (c < 0x10000 || c > 0x10ffff))
        || (c >= 0xd800 && c <= 0xdfff)) return 0;
    *cp = c;
    return len;
}

/* The number of characters in s, or -1 if it is not UTF-8. */
static long utf8_length(const char *s, size_t n)
{
    size_t i = 0, k;
    unsigned int cp;
    long chars = 0;

    for (; i < n; i += k, chars++)
        if ((k = utf8_seq((const unsigned char *)s + i, n - i, &cp)) == 0) return -1;
    return chars;
}

/* A copy of s fit for a log line: printable ASCII as it is, C0 controls,
 * DEL and each byte of invalid UTF-8 as '?', every other character as
 * \uNNNN or \UNNNNNNNN (the helper's spelling, pam_vrf.log.escape). Not only
 * what a terminal acts on (C1 controls: U+009B is CSI) but every bidi mark,
 * invisible format character and odd space (a name that looks like another):
 * no list of ours can follow Unicode, and Python's str.isprintable(), which
 * the helper uses, knows more than C does. Truncated at a character boundary. */
#define PRINTABLE_MAX(n) (3 * (n) + 1)      /* 2 bytes become 6 characters at most */
#define NAME_BYTES (4 * MAX_NAME)           /* UTF-8: 4 bytes a character at most */
static const char *printable(char *dst, size_t size, const char *s)
{
    size_t n = s ? strlen(s) : 0, i = 0, o = 0, k, w;
    const unsigned char *u = (const unsigned char *)s;
    unsigned int cp;
    char one[12];

    while (i < n) {
        k = utf8_seq(u + i, n - i, &cp);
        if (k == 1 && cp >= 0x20 && cp != 0x7f) one[0] = (char)cp, w = 1;
        else if (k > 1 && cp < 0x10000) w = (size_t)snprintf(one, sizeof(one), "\\u%04x", cp);
        else if (k > 1) w = (size_t)snprintf(one, sizeof(one), "\\U%08x", cp);
        else one[0] = '?', w = 1;
        if (o + w >= size) break;
        memcpy(dst + o, one, w);
        o += w;
        i += k ? k : 1;
    }
    dst[o] = '\0';
    return dst;
}

/* Append `,"key":"s"` to buf, s escaped as JSON; -1 if it does not fit or is
 * not UTF-8. */
static int json_field(char *buf, size_t size, size_t *len, const char *key, const char *s)
{
    size_t n = strlen(s), i;
    int w;

    if (utf8_length(s, n) < 0) return -1;
    w = snprintf(buf + *len, size - *len, ",\"%s\":\"", key);
    if (w < 0 || (size_t)w + 2 > size - *len) return -1;   /* + the closing quote and NUL */
    *len += (size_t)w;
    for (i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (size - *len < 8) return -1;     /* room for \u00XX, the quote and NUL */
        if (c == '"' || c == '\\') { buf[(*len)++] = '\\'; buf[(*len)++] = (char)c; }
        else if (c < 0x20 || c == 0x7f) *len += (size_t)snprintf(buf + *len, 7, "\\u%04x", c);
        else buf[(*len)++] = (char)c;
    }
    buf[(*len)++] = '"';
    buf[*len] = '\0';
    return 0;
}

/* {"v":2,"op":"open","user":U[,"service":S]}: all the helper reads (not the
 * tty, rhost or ruser); no pid, the helper moves the sender (see send_request).
 * A name the helper would refuse (over MAX_NAME characters) is not sent. */
static int encode_request(char *buf, size_t size, const char *user, const char *service)
{
    static const char head[] = "{\"v\":" XSTR(PROTOCOL_VERSION) ",\"op\":\"open\"";
    size_t len = sizeof(head) - 1;

    if (utf8_length(user, strlen(user)) > MAX_NAME || size < sizeof(head)) return -1;
    memcpy(buf, head, sizeof(head));
    if (json_field(buf, size, &len, "user", user) < 0
        || (service && json_field(buf, size, &len, "service", service) < 0) || len + 2 > size) return -1;
    buf[len++] = '}';
    buf[len] = '\0';
    return 0;
}

/* --- a strict parser for one flat JSON object --------------------------------
 * Values: strings, integers, true, false, null; anything nested is an error.
 * Strings are decoded in place: an escape is never shorter than what it
 * stands for, so the text is written over itself and NUL-terminated. */

struct cursor { char *p, *end; };

/* Skip whitespace; is the next byte ch? */
static int peek(struct cursor *c, char ch)
{
    while (c->p < c->end && *c->p && strchr(" \t\n\r", *c->p)) c->p++;
    return c->p < c->end && *c->p == ch;
}

static int hex4(const char *p, const char *end, unsigned int *v)
{
    static const char hex[] = "0123456789abcdef0123456789ABCDEF";
    const char *d;
    int i;

    for (*v = 0, i = 0; i < 4; i++) {
        if (p + i >= end || !p[i] || !(d = strchr(hex, p[i]))) return -1;
        *v = *v << 4 | (unsigned int)((d - hex) & 15);
    }
    return 0;
}

/* The string at c->p (its opening quote), or NULL. */
static char *parse_string(struct cursor *c)
{
    static const char escapes[] = "\"\\/bfnrt", decoded[] = "\"\\/\b\f\n\r\t";
    char *out = c->p + 1, *start = out, *p = c->p + 1;
    const char *e;
    unsigned int u, lo;

    for (; p < c->end && *p != '"'; ) {
        if ((unsigned char)*p < 0x20) return NULL;
        if (*p != '\\') { *out++ = *p++; continue; }      /* UTF-8: checked before */
        if (++p >= c->end || !*p) return NULL;
        if ((e = strchr(escapes, *p))) { *out++ = decoded[e - escapes]; p++; continue; }
        if (*p++ != 'u' || hex4(p, c->end, &u) < 0) return NULL;
        p += 4;
        if (u >= 0xdc00 && u <= 0xdfff) return NULL;          /* a lone low surrogate */
        if (u >= 0xd800 && u <= 0xdbff) {                       /* needs its low half */
            if (c->end - p < 6 || p[0] != '\\' || p[1] != 'u' || hex4(p + 2, c->end, &lo) < 0
                || lo < 0xdc00 || lo > 0xdfff) return NULL;
            p += 6;
            u = 0x10000 + ((u - 0xd800) << 10) + (lo - 0xdc00);
        }
        if (u == 0) return NULL;                                /* would cut the C string */
        if (u < 0x80) *out++ = (char)u;
        else if (u < 0x800) { *out++ = (char)(0xc0 | u >> 6); *out++ = (char)(0x80 | (u & 0x3f)); }
        else {
            int shift = u < 0x10000 ? 12 : 18;
            *out++ = (char)((u < 0x10000 ? 0xe0 : 0xf0) | u >> shift);
            for (shift -= 6; shift >= 0; shift -= 6) *out++ = (char)(0x80 | ((u >> shift) & 0x3f));
        }
    }
    if (p >= c->end) return NULL;
    *out = '\0';                        /* at most over the closing quote */
    c->p = p + 1;
    return start;
}

/* One value: 'S' (*str set), 'I' or 'B' (*num set), 'N' (null); -1 if malformed. */
static int parse_value(struct cursor *c, char **str, long *num)
{
    char *digits;

    if (peek(c, '"')) return (*str = parse_string(c)) ? 'S' : -1;
    if (c->end - c->p >= 4 && !memcmp(c->p, "true", 4)) { c->p += 4; *num = 1; return 'B'; }
    if (c->end - c->p >= 5 && !memcmp(c->p, "false", 5)) { c->p += 5; *num = 0; return 'B'; }
    if (c->end - c->p >= 4 && !memcmp(c->p, "null", 4)) { c->p += 4; return 'N'; }
    digits = c->p + (c->p < c->end && *c->p == '-');            /* -?(0|[1-9][0-9]*) */
    if (digits >= c->end || *digits < '0' || *digits > '9'
        || (*digits == '0' && digits + 1 < c->end && digits[1] >= '0' && digits[1] <= '9')) return -1;
    *num = strtol(c->p, &c->p, 10);     /* the buffer is NUL-terminated at end */
    return 'I';
}

static int parse_reply(char *buf, size_t len, struct reply *r)
{
    static const char *const keys[] = { "v", "ok", "verdict", "vrf", "rule", "error" };
    const char **strings[] = { NULL, NULL, &r->verdict, &r->vrf, &r->rule, &r->error };
    struct cursor c = { buf, buf + len };
    unsigned int seen = 0;
    char *key, *str = NULL;
    long num = 0;
    int kind, k;

    memset(r, 0, sizeof(*r));
    r->version = -1;
    if (utf8_length(buf, len) < 0 || !peek(&c, '{')) return -1;
    c.p++;
    if (peek(&c, '}')) c.p++;
    else for (;;) {
        if (!peek(&c, '"') || !(key = parse_string(&c)) || !peek(&c, ':')) return -1;
        c.p++;
        if ((kind = parse_value(&c, &str, &num)) < 0) return -1;
        for (k = 0; k < 6 && strcmp(key, keys[k]); k++)
            ;
        if (k < 6 && (seen & 1u << k)) return -1;              /* twice: which one counts? */
        if (k < 6) seen |= 1u << k;
        if (k == 0 && kind == 'I') r->version = num;
        else if (k == 1 && kind != 'B') return -1;
        else if (k == 1) r->ok = (int)num;
        else if (k >= 2 && k < 6 && kind == 'S') *strings[k] = str;
        else if (k >= 2 && k < 6 && kind != 'N') return -1;
        if (peek(&c, ',')) { c.p++; continue; }
        if (!peek(&c, '}')) return -1;                           /* '[', '{', 1.5...: here */
        c.p++;
        break;
    }
    peek(&c, '\0');
    return c.p == c.end ? 0 : -1;
}

/* --- talking to the helper --- */

static struct timespec deadline_in(int seconds)
{
    struct timespec t;

    clock_gettime(CLOCK_MONOTONIC, &t);
    t.tv_sec += seconds;
    return t;
}

static long us_left(const struct timespec *deadline)
{
    struct timespec now;

    clock_gettime(CLOCK_MONOTONIC, &now);
    return (deadline->tv_sec - now.tv_sec) * 1000000L + (deadline->tv_nsec - now.tv_nsec) / 1000;
}

/* Both socket timeouts set to what is left until the deadline: re-armed
 * before every call, so an EINTR retry never restarts the whole wait. */
static int arm_timeouts(int fd, const struct timespec *deadline)
{
    long left = us_left(deadline);
    struct timeval tv = { left / 1000000L, left % 1000000L };

    if (left <= 0) return -1;
    if (setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv)) < 0
        || setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv)) < 0) return -1;
    return 0;
}

static void describe_error(char *why, size_t size, int err, const char *path)
{
    char text[128];

    if (err == EAGAIN || err == EWOULDBLOCK || err == EINPROGRESS || err == ETIMEDOUT)
        snprintf(why, size, "helper did not answer within %d s", LOGIN_TIMEOUT);
    else if (err == ENOENT)
        snprintf(why, size, "helper not running (no socket %s)", path);
    else if (err == ECONNREFUSED)
        snprintf(why, size, "helper not running (nothing listens on %s)", path);
    else
        snprintf(why, size, "helper connection failed (%s): %s", path, strerror_r(err, text, sizeof(text)));
}

/* The request goes with a pidfd of this process (SCM_RIGHTS): the helper
 * pins the process it moves by it, so a reused pid is never moved instead. */
static ssize_t send_request(int fd, const char *request, int pidfd)
{
    union { struct cmsghdr align; char buf[CMSG_SPACE(sizeof(int))]; } control;
    struct iovec iov = { (void *)request, strlen(request) };
    struct msghdr msg = { .msg_iov = &iov, .msg_iovlen = 1,
                          .msg_control = control.buf, .msg_controllen = sizeof(control.buf) };
    struct cmsghdr *c;

    memset(&control, 0, sizeof(control));
    c = CMSG_FIRSTHDR(&msg);
    c->cmsg_level = SOL_SOCKET;
    c->cmsg_type = SCM_RIGHTS;
    c->cmsg_len = CMSG_LEN(sizeof(int));
    memcpy(CMSG_DATA(c), &pidfd, sizeof(int));
    return sendmsg(fd, &msg, MSG_NOSIGNAL);
}

/* One request, one reply. Returns the reply length, or -1 with why set and
 * *absent true when the helper is not running (no socket, nobody listening):
 * any other failure happened with the helper there. */
static ssize_t ask_helper(const char *socket_path, const char *request, char *reply, size_t size,
                          char *why, size_t why_size, int *absent)
{
    struct sockaddr_un addr = { .sun_family = AF_UNIX };
    const char *slash = strrchr(socket_path, '/');
    struct timespec deadline = deadline_in(LOGIN_TIMEOUT);
    ssize_t n = -1;
    int fd, rc, pidfd = -1, saved;
    char text[128];

    /* root.sock lives beside socket= (protocol.root_socket): "/a/b" -> "/a/root.sock" */
    if (!slash) rc = snprintf(addr.sun_path, sizeof(addr.sun_path), "./" ROOT_SOCKET);
    else rc = snprintf(addr.sun_path, sizeof(addr.sun_path), "%.*s/" ROOT_SOCKET,
                       (int)(slash - socket_path), socket_path);
    *absent = 0;
    if (rc < 0 || (size_t)rc >= sizeof(addr.sun_path)) {
        snprintf(why, why_size, "socket path too long: %s", socket_path);
        return *absent = 1, -1;         /* no helper can listen there */
    }
    /* Never a request without a pidfd: the helper could not tell who asks.
     * Opened first: the request then follows connect() at once, and the
     * helper, woken by the connection, finds it already there. */
    if ((pidfd = (int)syscall(SYS_pidfd_open, getpid(), 0)) < 0) {
        snprintf(why, why_size, "cannot open a pidfd of this process: %s", strerror_r(errno, text, sizeof(text)));
        return -1;
    }
    if ((fd = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0)) < 0) {
        describe_error(why, why_size, errno, addr.sun_path);
        close(pidfd);
        return -1;
    }
    do rc = arm_timeouts(fd, &deadline) < 0 ? (errno = ETIMEDOUT, -1)
            : connect(fd, (struct sockaddr *)&addr, sizeof(addr));
    while (rc < 0 && errno == EINTR);
    if (rc < 0) *absent = errno == ENOENT || errno == ECONNREFUSED;
    if (rc == 0) {
        do n = arm_timeouts(fd, &deadline) < 0 ? (errno = ETIMEDOUT, -1) : send_request(fd, request, pidfd);
        while (n < 0 && errno == EINTR);
    }
    saved = errno;
    close(pidfd);
    errno = saved;
    /* EPIPE: the helper may have answered (busy) and closed first; read why. */
    if (rc == 0 && (n >= 0 || errno == EPIPE || errno == ECONNRESET)) {
        do n = arm_timeouts(fd, &deadline) < 0 ? (errno = ETIMEDOUT, -1) : recv(fd, reply, size, 0);
        while (n < 0 && errno == EINTR);
        if (n == 0) snprintf(why, why_size, "helper closed the connection without an answer");
        else if ((size_t)n >= size)    /* size is MAX_MESSAGE + 1: a larger reply is refused */
            snprintf(why, why_size, "bad reply from helper: larger than %d bytes", MAX_MESSAGE);
        else if (n > 0) reply[n] = '\0';
    }
    if (n < 0) describe_error(why, why_size, errno, addr.sun_path);
    close(fd);
    return n > 0 && (size_t)n < size ? n : -1;
}

/* --- the offline decider, when the helper cannot be used --- */

/* Under su/sudo the invoking user chose our rlimits, nice value and scheduling
 * policy: a tiny address space or an idle priority would make the decider fail
 * or time out, and a strict rule would then not be honoured. Root may lift them. */
static void reset_limits(void)
{
    static const int unlimited[] = { RLIMIT_AS, RLIMIT_DATA, RLIMIT_CPU, RLIMIT_FSIZE,
                                     RLIMIT_NPROC, RLIMIT_RSS, RLIMIT_MEMLOCK };
    const struct rlimit none = { RLIM_INFINITY, RLIM_INFINITY }, stack = { 8 << 20, RLIM_INFINITY },
                        files = { 1024, 4096 };
    const struct sched_param normal = { 0 };
    size_t i;

    for (i = 0; i < sizeof(unlimited) / sizeof(unlimited[0]); i++)
        setrlimit(unlimited[i], &none);
    setrlimit(RLIMIT_STACK, &stack);
    setrlimit(RLIMIT_NOFILE, &files);
    setpriority(PRIO_PROCESS, 0, 0);
    sched_setscheduler(0, SCHED_OTHER, &normal);
}

/* The child: nothing of the caller's (fds, cwd, signal mask and handlers,
 * the invoking user's real ids under su/sudo, environment) reaches the
 * decider. Async-signal-safe calls only (the caller may be threaded), but
 * for libpam's log line when it cannot set up the descriptors, as in pam_unix. */
__attribute__((noreturn)) static void exec_decider(pam_handle_t *pamh, const char *const *argv, int out)
{
    static char *const envp[] = { "PATH=/usr/sbin:/usr/bin:/sbin:/bin", "LC_ALL=C.UTF-8", NULL };
    sigset_t none;
    int i;

    /* stdout: the verdict pipe (already fd 1 when the caller left it closed:
     * dup2 would keep close-on-exec); stdin an empty pipe, stderr /dev/null. */
    if ((out == STDOUT_FILENO ? fcntl(out, F_SETFD, 0) : dup2(out, STDOUT_FILENO)) < 0 || chdir("/") < 0
        || pam_modutil_sanitize_helper_fds(pamh, PAM_MODUTIL_PIPE_FD, PAM_MODUTIL_IGNORE_FD, PAM_MODUTIL_NULL_FD) < 0)
        _exit(126);
    close_range(3, ~0U, 0);     /* libpam before 1.5.3 (Debian 12) stops at fd 65535 */
    umask(077);                 /* not the caller's: the decider makes nothing for others */
    for (i = 1; i < NSIG; i++) signal(i, SIG_DFL);
    sigemptyset(&none);
    sigprocmask(SIG_SETMASK, &none, NULL);
    /* all ids 0, so the invoking user cannot signal it */
    if (geteuid() == 0 && (setresgid(0, 0, 0) < 0 || setgroups(0, NULL) < 0 || setresuid(0, 0, 0) < 0))
        _exit(126);
    reset_limits();
    execve(PAM_VRF_PYTHON, (char *const *)argv, envp);
    _exit(127);
}

/* 0 (proceed) or 1 (refuse) when the decider exited 0 after printing exactly
 * one verdict line on `out`; -1 (logged) for anything else. Polls: the
 * decider gets DECIDER_TIMEOUT seconds, then it is killed and reaped. */
static int wait_decider(pam_handle_t *pamh, pid_t pid, int out)
{
    char said[64];
    ssize_t n;
    struct timespec deadline = deadline_in(DECIDER_TIMEOUT), tick = { 0, 10 * 1000 * 1000 };
    int status = 0;
    pid_t got;

    while ((got = waitpid(pid, &status, WNOHANG)) != pid) {
        if (got < 0 && errno != EINTR) {
            pam_syslog(pamh, LOG_ERR, "cannot wait for the offline decider: %m");
            return -1;
        }
        if (us_left(&deadline) <= 0) {
            kill(pid, SIGKILL);
            while (waitpid(pid, &status, 0) < 0 && errno == EINTR)
                ;
            pam_syslog(pamh, LOG_ERR, "offline decider %s -m pam_vrf.offline did not finish within %d s: killed",
                       PAM_VRF_PYTHON, DECIDER_TIMEOUT);
            return -1;
        }
        nanosleep(&tick, NULL);
    }
    /* Exited: all it wrote is in the pipe (a writer that filled it was killed above). */
    n = read(out, said, sizeof(said) - 1);
    said[n > 0 ? n : 0] = '\0';
    if (WIFEXITED(status) && WEXITSTATUS(status) == 0 && !strcmp(said, VERDICT_PROCEED)) return 0;
    if (WIFEXITED(status) && WEXITSTATUS(status) == 0 && !strcmp(said, VERDICT_REFUSE)) return 1;
    if (WIFEXITED(status))
        pam_syslog(pamh, LOG_ERR, "offline decider %s -m pam_vrf.offline failed (exit status %d%s, no verdict)",
                   PAM_VRF_PYTHON, WEXITSTATUS(status), WEXITSTATUS(status) == 127 ? ": cannot execute it" : "");
    else
        pam_syslog(pamh, LOG_ERR, "offline decider %s -m pam_vrf.offline killed by signal %d",
                   PAM_VRF_PYTHON, WTERMSIG(status));
    return -1;
}

static int run_decider(pam_handle_t *pamh, const char *user, const char *service,
                       const struct options *o, const char *reason)
{
    const char *argv[16];
    struct sigaction dfl = { .sa_handler = SIG_DFL }, old;
    int argc = 0, rc, out[2];
    pid_t pid;

    argv[argc++] = "python3"; argv[argc++] = "-I"; argv[argc++] = "-m"; argv[argc++] = "pam_vrf.offline";
    if (service) { argv[argc++] = "--service"; argv[argc++] = service; }
    if (o->config) { argv[argc++] = "--config"; argv[argc++] = o->config; }
    if (o->debug) argv[argc++] = "--debug";
    argv[argc++] = "--reason"; argv[argc++] = reason;
    /* Last, after "--": a user name may start with '-'. */
    argv[argc++] = "--"; argv[argc++] = user;
    argv[argc] = NULL;

    /* The caller's SIGCHLD handler must not reap our child (pam_unix does the same). */
    sigemptyset(&dfl.sa_mask);
    if (sigaction(SIGCHLD, &dfl, &old) < 0) {
        pam_syslog(pamh, LOG_ERR, "cannot reset SIGCHLD: %m");
        return -1;
    }
    if (pipe2(out, O_CLOEXEC | O_NONBLOCK) < 0) {
        pam_syslog(pamh, LOG_ERR, "cannot make a pipe for the offline decider: %m");
        sigaction(SIGCHLD, &old, NULL);
        return -1;
    }
    if ((pid = fork()) == 0) exec_decider(pamh, argv, out[1]);
    close(out[1]);
    if (pid < 0) pam_syslog(pamh, LOG_ERR, "cannot fork the offline decider: %m");
    rc = pid < 0 ? -1 : wait_decider(pamh, pid, out[0]);
    close(out[0]);
    sigaction(SIGCHLD, &old, NULL);
    return rc;
}

/* 0 only when the policy can be read whole and has no "strict" anywhere:
 * then no strict rule can apply, whatever the decider would have said. */
static int may_be_strict(const char *path)
{
    char buf[4096 + 8];
    size_t keep = 0, total = 0;
    ssize_t n;
    int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOCTTY | O_NONBLOCK), found = 0;

    if (fd < 0) return 1;
    while (!found && total <= MAX_CONFIG && (n = read(fd, buf + keep, 4096)) > 0) {
        size_t len = keep + (size_t)n;
        total += (size_t)n;
        found = memmem(buf, len, "strict", 6) != NULL;
        keep = len < 5 ? len : 5;           /* a word cut between two reads */
        memmove(buf, buf + len - keep, keep);
    }
    if (n != 0 || total > MAX_CONFIG) found = 1;
    close(fd);
    return found;
}

/* The session is opened for a non-root invoker: su or sudo (the real uid is
 * the user's: measured with Debian's su and sudo 1.9.13/1.9.16), or a client
 * that set its real uid to 0 first (PAM_RUSER names the invoker). */
static const char *invoker(pam_handle_t *pamh, char *buf, size_t size)
{
    const void *item;
    const struct passwd *pw;

    if (getuid() != geteuid()) {
        snprintf(buf, size, "uid %u", (unsigned)getuid());
        return buf;
    }
    if (pam_get_item(pamh, PAM_RUSER, &item) != PAM_SUCCESS || !item || !*(const char *)item) return NULL;
    pw = pam_modutil_getpwnam(pamh, item);
    if (pw && pw->pw_uid == 0) return NULL;
    return printable(buf, size, item);
}

static int slow_path(pam_handle_t *pamh, const char *user, const char *service,
                     const struct options *o, const char *who, const char *reason)
{
    char safe_reason[512], by[PRINTABLE_MAX(NAME_BYTES)];
    int rc;

    /* The reason becomes an argument and a log line of the decider. */
    printable(safe_reason, sizeof(safe_reason), reason);
    if (o->debug) pam_syslog(pamh, LOG_DEBUG, "%s: %s; asking the offline decider", who, safe_reason);
    rc = run_decider(pamh, user, service, o, safe_reason);
    if (rc == 0) return PAM_SUCCESS;
    if (rc == 1) return PAM_SESSION_ERR;   /* a strict rule: the decider logged it */
    if (invoker(pamh, by, sizeof(by)) && may_be_strict(o->config ? o->config : DEFAULT_CONFIG)) {
        /* su/sudo for a non-root user: the invoker may have made the decider
         * fail (rlimits we could not lift, load until it timed out), and a
         * strict rule must not be escaped that way. Root's own logins, and a
         * policy without "strict", are never refused here. */
        pam_syslog(pamh, LOG_ERR, "%s: refusing session: %s, and the offline decider could not tell whether a "
                   "strict rule applies (invoked by %s through su/sudo)", who, safe_reason, by);
        return PAM_SESSION_ERR;
    }
    pam_syslog(pamh, LOG_ERR, "%s: session left unplaced (%s; offline decider unusable)", who, safe_reason);
    return PAM_IGNORE;
}

/* The helper runs but gave no verdict. Under su/sudo for a non-root invoker
 * that may be the invoker's doing: a file limit that makes pidfd_open() fail,
 * a memory limit on its cgroup that fails the kernel's allocations, su stopped
 * (SIGSTOP) until the helper gave up on the request or our deadline passed.
 * The session would then open unplaced by the invoker's choice: refused.
 * Root's own logins take the slow path (only a strict rule refuses). */
static int not_answered(pam_handle_t *pamh, const char *user, const char *service,
                        const struct options *o, const char *who, const char *reason)
{
    char safe_reason[512], by[PRINTABLE_MAX(NAME_BYTES)];

    if (!invoker(pamh, by, sizeof(by))) return slow_path(pamh, user, service, o, who, reason);
    pam_syslog(pamh, LOG_ERR, "%s: refusing session: %s, with the helper running (invoked by %s through "
               "su/sudo, who may have caused it)", who, printable(safe_reason, sizeof(safe_reason), reason), by);
    return PAM_SESSION_ERR;
}

/* A name the kernel could accept for a device: what PAM_VRF may carry. */
static int ifname_ok(const char *s)
{
    size_t n = strlen(s), i;

    if (n == 0 || n > IFNAMSIZ_MAX || !strcmp(s, ".") || !strcmp(s, "..")) return 0;
    for (i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c <= 0x20 || c == 0x7f || c == '/' || c == ':' || (c >= '\t' && c <= '\r')) return 0;
    }
    return 1;
}

/* The module's arguments (pam_vrf(8)), read as pam_limits and pam_systemd
 * read theirs: the last of a kind counts; anything else is logged and ignored. */
static struct options parse_args(pam_handle_t *pamh, int argc, const char **argv)
{
    struct options o = { NULL, DEFAULT_SOCKET, 0 };
    const char **path;
    char safe[256];
    int i;

    for (i = 0; i < argc; i++) {
        path = !strncmp(argv[i], "config=", 7) ? &o.config : !strncmp(argv[i], "socket=", 7) ? &o.socket : NULL;
        if (!strcmp(argv[i], "debug")) o.debug = 1;
        else if (!path) pam_syslog(pamh, LOG_WARNING, "ignoring unknown module argument '%s'",
                                   printable(safe, sizeof(safe), argv[i]));
        /* a relative path would name a file in the caller's working directory (su: the user's) */
        else if (argv[i][7] == '/') *path = argv[i] + 7;
        else pam_syslog(pamh, LOG_ERR, "ignoring '%s': not an absolute path", printable(safe, sizeof(safe), argv[i]));
    }
    return o;
}

static int open_session(pam_handle_t *pamh, int argc, const char **argv)
{
    const struct options o = parse_args(pamh, argc, argv);
    const void *item;
    const char *user, *service = NULL, *verdict;
    char u_safe[PRINTABLE_MAX(NAME_BYTES)], s_safe[128], a_safe[256], v_safe[64], r_safe[256], e_safe[512];
    char request[MAX_MESSAGE + 1], reply_buf[MAX_MESSAGE + 2], why[600], who[sizeof(u_safe) + sizeof(s_safe) + 32];
    struct reply r;
    ssize_t n;
    int absent;

    if (pam_get_item(pamh, PAM_USER, &item) != PAM_SUCCESS || !item || !*(const char *)item) {
        pam_syslog(pamh, LOG_ERR, "no user name: nothing to place");
        return PAM_USER_UNKNOWN;
    }
    user = item;
    if (pam_get_item(pamh, PAM_SERVICE, &item) == PAM_SUCCESS && item && *(const char *)item) service = item;
    snprintf(who, sizeof(who), "user %s (service %s)", printable(u_safe, sizeof(u_safe), user),
             printable(s_safe, sizeof(s_safe), service ? service : "-"));

    if (encode_request(request, sizeof(request), user, service) < 0)
        return slow_path(pamh, user, service, &o, who, "cannot encode the request (not UTF-8, a user name over "
                         XSTR(MAX_NAME) " characters, or over " XSTR(MAX_MESSAGE) " bytes)");
    n = ask_helper(o.socket, request, reply_buf, MAX_MESSAGE + 1, why, sizeof(why), &absent);
    if (n < 0 && absent) return slow_path(pamh, user, service, &o, who, why);
    if (n < 0) return not_answered(pamh, user, service, &o, who, why);
    if (parse_reply(reply_buf, (size_t)n, &r) < 0)
        return not_answered(pamh, user, service, &o, who, "bad reply from helper: not a flat JSON object");
    if (r.version != PROTOCOL_VERSION)
        return not_answered(pamh, user, service, &o, who,
                            "bad reply from helper: protocol version is not " XSTR(PROTOCOL_VERSION));
    printable(e_safe, sizeof(e_safe), r.error ? r.error : "no reason given");
    if (!r.ok) {        /* "request not received in time": su stopped after connecting */
        snprintf(why, sizeof(why), "helper failed: %s", e_safe);
        return not_answered(pamh, user, service, &o, who, why);
    }
    verdict = r.verdict ? r.verdict : "(none)";
    printable(v_safe, sizeof(v_safe), r.vrf ? r.vrf : "-");
    printable(r_safe, sizeof(r_safe), r.rule ? r.rule : "no rule");
    if (!strcmp(verdict, "placed") || !strcmp(verdict, "kept")) {
        char env[sizeof("PAM_VRF=") + IFNAMSIZ_MAX];
        /* what the session's programs may read; never anything odd */
        if (r.vrf && *r.vrf && !ifname_ok(r.vrf))
            pam_syslog(pamh, LOG_WARNING, "%s: helper named an odd VRF '%s': PAM_VRF not set", who, v_safe);
        else if (r.vrf && *r.vrf && (snprintf(env, sizeof(env), "PAM_VRF=%s", r.vrf) < 0
                                     || pam_putenv(pamh, env) != PAM_SUCCESS))
            pam_syslog(pamh, LOG_ERR, "%s: cannot set PAM_VRF", who);
        if (o.debug) pam_syslog(pamh, LOG_DEBUG, "%s %s in VRF %s (%s)", who, verdict, v_safe, r_safe);
        return PAM_SUCCESS;
    }
    if (!strcmp(verdict, "alone") || !strcmp(verdict, "unplaced")) {   /* the helper logged why */
        if (o.debug)
            pam_syslog(pamh, LOG_DEBUG, "%s left %s (%s%s%s)", who, verdict[0] == 'a' ? "alone" : "unplaced",
                       r_safe, r.error ? ": " : "", r.error ? e_safe : "");
        return PAM_SUCCESS;
    }
    if (!strcmp(verdict, "refused")) {
        pam_syslog(pamh, LOG_ERR, "session refused: %s (%s)", e_safe, who);
        return PAM_SESSION_ERR;
    }
    snprintf(why, sizeof(why), "bad reply from helper: verdict '%s'", printable(a_safe, sizeof(a_safe), verdict));
    return not_answered(pamh, user, service, &o, who, why);
}

/* Under su/sudo the invoking user chose our file limit: a soft limit just
 * above what is open makes pidfd_open() or the decider's pipe fail. The soft
 * limit may rise to the hard one without privilege, and root (with
 * CAP_SYS_RESOURCE) may lift a hard limit that leaves no room. The caller's
 * limit is put back before we return: the session inherits it. */
#define FILES_ROOM 16
static int lift_file_limit(struct rlimit *saved)
{
    struct rlimit want;

    if (getrlimit(RLIMIT_NOFILE, saved) < 0 || saved->rlim_max == RLIM_INFINITY) return 0;
    want.rlim_cur = want.rlim_max = saved->rlim_cur + FILES_ROOM;
    if (saved->rlim_max < want.rlim_max && setrlimit(RLIMIT_NOFILE, &want) == 0) return 1;
    want.rlim_cur = want.rlim_max = saved->rlim_max;
    return saved->rlim_cur < saved->rlim_max && setrlimit(RLIMIT_NOFILE, &want) == 0;
}

PUBLIC int pam_sm_open_session(pam_handle_t *pamh, int flags, int argc, const char **argv)
{
    struct rlimit saved;
    int lifted = lift_file_limit(&saved), rc;

    (void)flags;
    rc = open_session(pamh, argc, argv);
    if (lifted) setrlimit(RLIMIT_NOFILE, &saved);
    return rc;
}

PUBLIC int pam_sm_close_session(pam_handle_t *pamh, int flags, int argc, const char **argv)
{
    (void)pamh; (void)flags; (void)argc; (void)argv;
    return PAM_SUCCESS;   /* the VRF cgroup goes with the session's processes */
}
