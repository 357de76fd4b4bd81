/* zentry-pool-init: PID 1 of a pooled sandbox, an exec server.
 *
 * The node agent starts every warm sandbox with this program as its process
 * (bind-mounted read-only at /.zentry/pool-init) and fd 3 one end of a
 * SOCK_SEQPACKET pair whose other end the agent keeps.  Being the
 * container's init, it already is in every namespace and cgroup of the
 * container, under its seccomp filter, user and capabilities: an exec is one
 * fork + execve here, with nothing to join.  Requests (one datagram each,
 * with the stdio fds attached by SCM_RIGHTS):
 *
 *   u32 op, u32 id, u32 uid, u32 gid, u32 mode, u32 argc, u32 envc, u32 ngroups,
 *   gid_t groups[ngroups], then NUL-terminated strings: cwd, argv..., env...
 *
 *   op 1 exec: argv/env/cwd/user, fds stdin, stdout, stderr
 *   op 2 put:  argv[0] the path, mode; fds source, -, stderr   (written as uid:gid)
 *   op 3 get:  argv[0] the path;       fds -, sink, stderr
 *   op 4 kill: the process group of request `uid` gets signal `gid`
 *
 * Replies: struct { u32 kind; u32 id; i32 a; i32 b; }
 *   kind 1 started (a: pid in the container), kind 2 exited (b: wait status),
 *   kind 3 refused (b: errno; the request never ran).
 * EOF on fd 3 (the agent went away): every child is killed and init exits,
 * which ends the sandbox; a restarted agent deletes what is left.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <poll.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#define CHAN 3
#define MAX_MSG (256 * 1024)
#define MAX_KIDS 4096
/* the exit status of a command that could not start (exec, chdir, user): runc exec's */
#define START_FAILED 255

struct reply { uint32_t kind, id; int32_t a, b; };
static struct { pid_t pid; uint32_t id; } kids[MAX_KIDS];
static char buf[MAX_MSG];
extern char **environ;

static void say(uint32_t kind, uint32_t id, int32_t a, int32_t b)
{
    struct reply r = { kind, id, a, b };
    while (send(CHAN, &r, sizeof r, MSG_NOSIGNAL) < 0 && errno == EINTR)
        ;
}

static void copy(int from, int to)
{
    char b[65536];
    for (;;) {
        ssize_t n = read(from, b, sizeof b);
        if (n < 0 && errno == EINTR) continue;
        if (n < 0) { dprintf(2, "zentry pool: read: %s\n", strerror(errno)); _exit(1); }
        if (n == 0) return;
        for (ssize_t off = 0; off < n;) {
            ssize_t w = write(to, b + off, n - off);
            if (w < 0 && errno == EINTR) continue;
            if (w < 0) { dprintf(2, "zentry pool: write: %s\n", strerror(errno)); _exit(1); }
            off += w;
        }
    }
}

/* In the child: become the requested process (never returns). */
static void child(uint32_t op, uint32_t uid, uint32_t gid, uint32_t mode, uint32_t ngroups, gid_t *groups,
                  const char *cwd, char **argv, char **envp, int *fds, int nfds)
{
    sigset_t none;
    sigemptyset(&none);
    sigprocmask(SIG_SETMASK, &none, NULL);
    setpgid(0, 0);
    for (int i = 0; i < 3; i++) {
        if (i < nfds && fds[i] >= 0) {
            if (fds[i] != i) dup2(fds[i], i);
        } else {
            int null = open("/dev/null", O_RDWR);
            if (null >= 0 && null != i) { dup2(null, i); close(null); }
        }
    }
    syscall(SYS_close_range, 3, ~0U, 0);
    if (geteuid() == 0 || getegid() != gid) {
        if (setgroups(ngroups, groups) < 0 && errno != EPERM) goto fail_id;
        if (getgid() != gid && setresgid(gid, gid, gid) < 0) goto fail_id;
    }
    if (getuid() != uid && setresuid(uid, uid, uid) < 0) goto fail_id;
    if (cwd[0] && chdir(cwd) < 0) {
        dprintf(2, "zentry pool: chdir %s: %s\n", cwd, strerror(errno));
        _exit(START_FAILED);
    }
    if (op == 2) {
        int fd = open(argv[0], O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, mode & 07777);
        if (fd < 0) { dprintf(2, "zentry pool: put %s: %s\n", argv[0], strerror(errno)); _exit(1); }
        fchmod(fd, mode & 07777);
        copy(0, fd);
        if (close(fd) < 0) { dprintf(2, "zentry pool: put %s: %s\n", argv[0], strerror(errno)); _exit(1); }
        _exit(0);
    }
    if (op == 3) {
        int fd = open(argv[0], O_RDONLY | O_CLOEXEC);
        if (fd < 0) { dprintf(2, "zentry pool: get %s: %s\n", argv[0], strerror(errno)); _exit(1); }
        copy(fd, 1);
        _exit(0);
    }
    environ = envp;
    execvp(argv[0], argv);
    dprintf(2, "zentry pool: exec %s: %s\n", argv[0], strerror(errno));
    _exit(START_FAILED);
fail_id:
    dprintf(2, "zentry pool: cannot become %u:%u: %s\n", uid, gid, strerror(errno));
    _exit(START_FAILED);
}

static void request(void)
{
    int fds[3] = { -1, -1, -1 }, nfds = 0;
    char cbuf[CMSG_SPACE(3 * sizeof(int))];
    struct iovec iov = { buf, sizeof buf - 1 };
    struct msghdr mh = { .msg_iov = &iov, .msg_iovlen = 1, .msg_control = cbuf, .msg_controllen = sizeof cbuf };
    ssize_t n = recvmsg(CHAN, &mh, MSG_CMSG_CLOEXEC);
    if (n < 0 && errno == EINTR) return;
    if (n <= 0) {  /* the agent is gone: end the sandbox */
        kill(-1, SIGKILL);
        _exit(0);
    }
    for (struct cmsghdr *c = CMSG_FIRSTHDR(&mh); c; c = CMSG_NXTHDR(&mh, c))
        if (c->cmsg_level == SOL_SOCKET && c->cmsg_type == SCM_RIGHTS) {
            nfds = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
            if (nfds > 3) nfds = 3;
            memcpy(fds, CMSG_DATA(c), nfds * sizeof(int));
        }
    uint32_t h[8];
    if ((size_t)n < sizeof h) goto bad;
    memcpy(h, buf, sizeof h);
    uint32_t op = h[0], id = h[1], uid = h[2], gid = h[3], mode = h[4], argc = h[5], envc = h[6], ngroups = h[7];
    if (op == 4) {
        for (int i = 0; i < MAX_KIDS; i++)
            if (kids[i].pid > 0 && kids[i].id == uid) kill(-kids[i].pid, (int)gid);
        goto done;
    }
    if (op < 1 || op > 3 || argc < 1 || argc > 65536 || envc > 65536 || ngroups > 65536) goto bad;
    size_t off = sizeof h + ngroups * sizeof(gid_t);
    if (off > (size_t)n) goto bad;
    gid_t *groups = (gid_t *)(buf + sizeof h);
    buf[n] = 0;
    char **strs = calloc(1 + argc + 1 + envc + 1, sizeof(char *));
    if (!strs) goto bad;
    uint32_t want = 1 + argc + envc, got = 0;
    for (char *p = buf + off; p < buf + n && got < want; p += strlen(p) + 1)
        strs[got < 1 + argc ? got : got + 1] = p, got++;
    if (got != want) { free(strs); goto bad; }
    char *cwd = strs[0], **argv = strs + 1, **envp = strs + 2 + argc;
    argv[argc] = NULL;
    envp[envc] = NULL;
    int slot = -1;
    for (int i = 0; i < MAX_KIDS; i++)
        if (kids[i].pid == 0) { slot = i; break; }
    if (slot < 0) { free(strs); say(3, id, 0, EAGAIN); goto done; }
    pid_t pid = fork();
    if (pid == 0) child(op, uid, gid, mode, ngroups, groups, cwd, argv, envp, fds, nfds);
    free(strs);
    if (pid < 0) { say(3, id, 0, errno); goto done; }
    kids[slot].pid = pid;
    kids[slot].id = id;
    say(1, id, pid, 0);
    goto done;
bad:
    say(3, n >= 8 ? ((uint32_t *)buf)[1] : 0, 0, EINVAL);
done:
    for (int i = 0; i < nfds; i++)
        if (fds[i] >= 0) close(fds[i]);
}

static void reap(void)
{
    int status;
    pid_t pid;
    while ((pid = waitpid(-1, &status, WNOHANG)) > 0)
        for (int i = 0; i < MAX_KIDS; i++)
            if (kids[i].pid == pid) {
                say(2, kids[i].id, pid, status);
                kids[i].pid = 0;
                break;
            }
}

int main(void)
{
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGCHLD);
    sigaddset(&set, SIGPIPE);
    sigprocmask(SIG_BLOCK, &set, NULL);
    int sfd = signalfd(-1, &set, SFD_CLOEXEC | SFD_NONBLOCK);
    if (sfd < 0 || fcntl(CHAN, F_SETFD, FD_CLOEXEC) < 0) {
        dprintf(2, "zentry pool init: %s\n", strerror(errno));
        return 1;
    }
    say(0, 0, getpid(), 0);  /* hello: the agent knows the exec server is up */
    struct pollfd p[2] = { { CHAN, POLLIN, 0 }, { sfd, POLLIN, 0 } };
    for (;;) {
        if (poll(p, 2, -1) < 0) continue;
        if (p[1].revents) {
            struct signalfd_siginfo si;
            while (read(sfd, &si, sizeof si) > 0)
                ;
            reap();
        }
        if (p[0].revents) request();
    }
}
