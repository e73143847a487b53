/* bench P1-C: a PAM module that moves its own process into a fixed cgroup
 * (argv[0]: the cgroup directory): the kernel's work of a placement, done
 * the simplest way in C, nothing else. An optional argv[1] waits that many
 * microseconds first (where a move lands on the RCU grace-period grid). */
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>

#include <security/pam_modules.h>

PAM_EXTERN int pam_sm_open_session(pam_handle_t *pamh, int flags, int argc, const char **argv)
{
    char path[4096], pid[24];
    int fd, n, ok;

    (void)pamh;
    (void)flags;
    if (argc < 1 || snprintf(path, sizeof(path), "%s/cgroup.procs", argv[0]) >= (int)sizeof(path))
        return PAM_SESSION_ERR;
    if (argc > 1) {
        long us = atol(argv[1]);
        struct timespec wait = { us / 1000000, us % 1000000 * 1000 };
        nanosleep(&wait, NULL);
    }
    fd = open(path, O_WRONLY | O_CLOEXEC);
    if (fd < 0)
        return PAM_SESSION_ERR;
    n = snprintf(pid, sizeof(pid), "%d", (int)getpid());
    ok = write(fd, pid, n) == n;
    close(fd);
    return ok ? PAM_SUCCESS : PAM_SESSION_ERR;
}

PAM_EXTERN int pam_sm_close_session(pam_handle_t *pamh, int flags, int argc, const char **argv)
{
    (void)pamh;
    (void)flags;
    (void)argc;
    (void)argv;
    return PAM_SUCCESS;
}
