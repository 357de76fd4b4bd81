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
#include <time.h>
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

/* The loop of the exec server and the spawner alike: requests on CHAN
 * (on_request reads one), exits of their children (reap). */
static int loop(void (*on_request)(void))
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
    say(0, 0, getpid(), 0);  /* hello: the agent knows we are up */
    struct pollfd p[2] = { { CHAN, POLLIN, 0 }, { sfd, POLLIN, 0 } };
    for (;;) {
        if (poll(p, 2, -1) < 0) continue;
        if (p[1].revents) {
            struct signalfd_siginfo si;
            while (read(sfd, &si, sizeof si) > 0)
                ;
            reap();
        }
        if (p[0].revents) on_request();
    }
}

static int serve(void)
{
    return loop(request);
}

/* ---- Spawner mode: the init of a pool's template ----------------------------
 *
 * `zentry-pool-init --spawner` is the init of a pool's *template*: a zentry
 * container made with `zentry run --pool-spawner`, whose init loads no
 * seccomp filter and keeps every capability, because it makes sandboxes:
 * each one a child in new mount, pid, ipc, uts, time (and network) namespaces,
 * with a fresh in-memory overlay over the template's root and a fresh copy
 * of the template's mount table, its own cgroup, the pool's capabilities and
 * the pool's seccomp filters (zentry's with a listener for the template's
 * sentry). The child then becomes that sandbox's exec server (serve()).
 * The spawner runs nothing but this code; the sandboxes cannot reach it
 * (it is outside their pid namespace).
 *
 * Requests on fd 3 (the agent's channel), besides EOF (the agent is gone:
 * every sandbox is killed with the template):
 *
 *   op 17 filters: u32 op, u32 count, then per filter: u32 flags, u32 n,
 *                  struct sock_filter[n].  The last one is loaded with its
 *                  flags (zentry's: NEW_LISTENER...) and its listener is sent.
 *   op 16 spawn:   struct spawn_req below; fds: the sandbox's channel, then
 *                  the cgroup.procs files of its cgroup (opened by the agent).
 *                  clone_flags: clone(2)'s namespaces, and CLONE_NEWTIME for a
 *                  time namespace of the sandbox's own (new_time_namespace)
 *
 * Replies on fd 3: kind 1 started (id, a: pid here), kind 3 refused (b: errno),
 * kind 2 exited (id, b: wait status).  The sandbox itself speaks on its own
 * channel: kind 5 listener (SCM_RIGHTS), kind 6 failed (a: step, b: errno,
 * then the message), then kind 0 hello, as any exec server.
 */
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <linux/capability.h>
#include <net/if.h>
#include <sys/ioctl.h>
#include <sys/mount.h>
#include <sys/prctl.h>
#include <dirent.h>
#include <sched.h>

#define OP_SPAWN 16
#define OP_FILTERS 17
#define MAX_FILTERS 4
#define MAX_CG 16
#define SCRATCH "/dev/.zentry-sandbox"

struct spawn_req {
    uint32_t op, id, clone_flags, no_new_privs;
    uint64_t bounding, effective, permitted, inheritable, ambient;
    uint32_t scratch_mib, readonly_root;
};

static struct { uint32_t flags; struct sock_fprog prog; } filters[MAX_FILTERS];
static int nfilters;

/* The sandbox's setup failed: say why on its channel and end it. */
static void fail(int step, const char *what)
{
    char m[600];
    struct reply r = { 6, 0, step, errno };
    memcpy(m, &r, sizeof r);
    int l = snprintf(m + sizeof r, sizeof m - sizeof r, "%s: %s", what, strerror(errno));
    send(CHAN, m, sizeof r + (l > 0 ? l : 0), MSG_NOSIGNAL);
    _exit(1);
}

struct mnt { char *root, *point, *type, *source, *opts, *sopts; };

static void unescape(char *s)  /* mountinfo's \040 and friends */
{
    char *o = s;
    for (; *s; s++, o++) {
        if (s[0] == '\\' && s[1] >= '0' && s[1] <= '3' && s[2] && s[3]) {
            *o = (char)((s[1] - '0') * 64 + (s[2] - '0') * 8 + (s[3] - '0'));
            s += 3;
        } else {
            *o = *s;
        }
    }
    *o = 0;
}

/* This mount namespace's table, in mountinfo's order (parents first). */
static int read_mounts(struct mnt *out, int max, char *text, size_t size)
{
    int fd = open("/proc/self/mountinfo", O_RDONLY | O_CLOEXEC);
    if (fd < 0) return -1;
    size_t len = 0;
    for (ssize_t n; (n = read(fd, text + len, size - 1 - len)) > 0;) len += n;
    close(fd);
    text[len] = 0;
    if (len >= size - 1) return max;  /* truncated: the caller refuses it */
    int count = 0;
    for (char *line = text, *next; line && *line && count < max; line = next) {
        next = strchr(line, '\n');
        if (next) *next++ = 0;
        char *f[12] = { 0 };
        int nf = 0;
        for (char *tok = strtok(line, " "); tok && nf < 12; tok = strtok(NULL, " ")) {
            if (strcmp(tok, "-") == 0) {  /* optional fields end: type, source, super options follow */
                f[6] = strtok(NULL, " "), f[7] = strtok(NULL, " "), f[8] = strtok(NULL, " ");
                nf = 9;
                break;
            }
            if (nf < 6) f[nf] = tok;
            nf++;
        }
        if (nf < 9 || !f[4] || !f[6] || !f[8]) continue;
        unescape(f[4]);
        unescape(f[3]);
        out[count++] = (struct mnt){ f[3], f[4], f[6], f[7], f[5], f[8] };
    }
    return count;
}

static unsigned long mount_flags(const char *opts)
{
    static const struct { const char *name; unsigned long flag; } known[] = {
        { "ro", MS_RDONLY }, { "nosuid", MS_NOSUID }, { "nodev", MS_NODEV }, { "noexec", MS_NOEXEC },
        { "noatime", MS_NOATIME }, { "nodiratime", MS_NODIRATIME }, { "relatime", MS_RELATIME },
    };
    unsigned long flags = 0;
    char copy[512];
    snprintf(copy, sizeof copy, "%s", opts);
    for (char *save, *tok = strtok_r(copy, ",", &save); tok; tok = strtok_r(NULL, ",", &save))
        for (size_t i = 0; i < sizeof known / sizeof known[0]; i++)
            if (strcmp(tok, known[i].name) == 0) flags |= known[i].flag;
    return flags;
}

/* A new tmpfs gets what the template's had, minus what is mounted on it
 * (those come as mounts of their own): directories, symlinks, device nodes
 * (placeholders where mknod is not allowed), small files. */
static void copy_tree(const char *from, const char *to, dev_t dev, int depth)
{
    DIR *d = opendir(from);
    if (!d || depth > 8) { if (d) closedir(d); return; }
    for (struct dirent *e; (e = readdir(d));) {
        if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0) continue;
        char src[4096], dst[4096];
        snprintf(src, sizeof src, "%s/%s", from, e->d_name);
        if (strcmp(src, SCRATCH) == 0) continue;
        snprintf(dst, sizeof dst, "%s/%s", to, e->d_name);
        struct stat st;
        if (lstat(src, &st) < 0) continue;
        if (st.st_dev != dev) {  /* a mount point: its placeholder */
            if (S_ISDIR(st.st_mode)) mkdir(dst, st.st_mode & 07777);
            else close(open(dst, O_WRONLY | O_CREAT | O_CLOEXEC, 0600));
            continue;
        }
        if (S_ISDIR(st.st_mode)) {
            mkdir(dst, st.st_mode & 07777);
            copy_tree(src, dst, dev, depth + 1);
        } else if (S_ISLNK(st.st_mode)) {
            char target[4096];
            ssize_t n = readlink(src, target, sizeof target - 1);
            if (n < 0) continue;
            target[n] = 0;
            if (symlink(target, dst) < 0) continue;
        } else if (S_ISCHR(st.st_mode) || S_ISBLK(st.st_mode) || S_ISFIFO(st.st_mode)) {
            if (mknod(dst, st.st_mode, st.st_rdev) < 0)
                close(open(dst, O_WRONLY | O_CREAT | O_CLOEXEC, 0600));
        } else if (S_ISREG(st.st_mode) && st.st_size <= 65536) {
            int in = open(src, O_RDONLY | O_CLOEXEC), out = open(dst, O_WRONLY | O_CREAT | O_CLOEXEC, 0600);
            if (in >= 0 && out >= 0) copy(in, out);
            if (in >= 0) close(in);
            if (out >= 0) close(out);
        } else {
            continue;
        }
        lchown(dst, st.st_uid, st.st_gid);
        if (!S_ISLNK(st.st_mode)) chmod(dst, st.st_mode & 07777);
    }
    closedir(d);
}

/* This user namespace's id maps (/proc/self/{uid,gid}_map), read once per sandbox. */
#define MAX_IDMAP 340  /* the kernel's limit of lines in an id map */
struct idmap { int n; unsigned long inside[MAX_IDMAP], outside[MAX_IDMAP], count[MAX_IDMAP]; };

static void read_idmap(const char *which, struct idmap *map)
{
    char path[64], line[128];
    snprintf(path, sizeof path, "/proc/self/%s_map", which);
    FILE *f = fopen(path, "re");
    map->n = 0;
    while (f && map->n < MAX_IDMAP && fgets(line, sizeof line, f))
        if (sscanf(line, "%lu %lu %lu", &map->inside[map->n], &map->outside[map->n], &map->count[map->n]) == 3)
            map->n++;
    if (f) fclose(f);
}

/* An id as mountinfo gives it (the host's number) in the namespace's numbers; -1 if not mapped. */
static long map_id(const struct idmap *map, unsigned long host)
{
    for (int i = 0; i < map->n; i++)
        if (host >= map->outside[i] && host - map->outside[i] < map->count[i])
            return (long)(map->inside[i] + (host - map->outside[i]));
    return -1;
}

/* A filesystem's own options (mountinfo's super options) for a new mount of it here:
 * without rw/ro (those are per mount), its uid=/gid= in this namespace's numbers
 * (left out when not mapped: the kernel's default owner then). */
static void data_of(const char *sopts, const struct idmap *uids, const struct idmap *gids, char *out, size_t size)
{
    char copy[512];
    snprintf(copy, sizeof copy, "%s", sopts);
    out[0] = 0;
    for (char *save, *tok = strtok_r(copy, ",", &save); tok; tok = strtok_r(NULL, ",", &save)) {
        char item[128];
        int uid = strncmp(tok, "uid=", 4) == 0, gid = strncmp(tok, "gid=", 4) == 0;
        if (strcmp(tok, "rw") == 0 || strcmp(tok, "ro") == 0) continue;
        if (uid || gid) {
            long id = map_id(uid ? uids : gids, strtoul(tok + 4, NULL, 10));
            if (id < 0) continue;
            snprintf(item, sizeof item, "%s=%ld", uid ? "uid" : "gid", id);
        } else {
            snprintf(item, sizeof item, "%s", tok);
        }
        size_t l = strlen(out);
        snprintf(out + l, size - l, "%s%s", l ? "," : "", item);
    }
}

/* The sandbox's root: an overlay of the template's root with its upper layer
 * in a new tmpfs, and on it every mount of the template's table again —
 * fresh instances of what is per sandbox (proc, sysfs, mqueue, devpts,
 * tmpfs, cgroup), binds of the rest — then pivot_root into it. */
static void make_root(const struct spawn_req *r)
{
    static char text[1 << 17];
    static struct mnt m[512];
    if (mount(NULL, "/", NULL, MS_REC | MS_PRIVATE, NULL) < 0) fail(10, "make / private");
    int n = read_mounts(m, 512, text, sizeof text);
    if (n < 0) fail(11, "read /proc/self/mountinfo");
    if (n >= 512) { errno = E2BIG; fail(11, "the template's mount table"); }
    static struct idmap uids, gids;
    read_idmap("uid", &uids);
    read_idmap("gid", &gids);
    if (mkdir(SCRATCH, 0700) < 0 && errno != EEXIST) fail(12, "mkdir " SCRATCH);
    char opts[128];
    snprintf(opts, sizeof opts, "mode=0700,size=%um", r->scratch_mib ? r->scratch_mib : 64);
    if (mount("tmpfs", SCRATCH, "tmpfs", MS_NOSUID | MS_NODEV, opts) < 0) fail(13, "mount the overlay's tmpfs");
    struct stat top;
    if (stat("/", &top) < 0) fail(14, "stat /");
    if (mkdir(SCRATCH "/upper", top.st_mode & 07777) < 0 || mkdir(SCRATCH "/work", 0700) < 0 || mkdir(SCRATCH "/root", 0700) < 0)
        fail(14, "mkdir in the overlay's tmpfs");
    chown(SCRATCH "/upper", top.st_uid, top.st_gid);
    chmod(SCRATCH "/upper", top.st_mode & 07777);
    if (mount("overlay", SCRATCH "/root", "overlay", r->readonly_root ? MS_RDONLY : 0,
              "lowerdir=/,upperdir=" SCRATCH "/upper,workdir=" SCRATCH "/work") < 0)
        fail(15, "mount the root overlay");
    for (int i = 0; i < n; i++) {
        const char *p = m[i].point, *t = m[i].type;
        if (strcmp(p, "/") == 0) continue;
        char target[4096], data[512];
        snprintf(target, sizeof target, SCRATCH "/root%s", p);
        unsigned long flags = mount_flags(m[i].opts);
        data_of(m[i].sopts, &uids, &gids, data, sizeof data);
        /* what must be the sandbox's own is made fresh, or the sandbox is not made:
         * a bind of the template's would share it between sandboxes */
        int own = strcmp(m[i].root, "/") == 0;
        if (!own) {
            /* a bind of part of a filesystem (a masked path's /dev/null, a view): bound again below */
        } else if (strcmp(t, "proc") == 0) {
            if (mount("proc", target, "proc", flags, NULL) < 0) fail(16, "mount proc");
            continue;
        } else if (strcmp(t, "sysfs") == 0 && (r->clone_flags & CLONE_NEWNET)) {
            if (mount("sysfs", target, "sysfs", flags, NULL) < 0) fail(16, "mount sysfs");
            continue;
        } else if (strcmp(t, "mqueue") == 0 && (r->clone_flags & CLONE_NEWIPC)) {
            if (mount("mqueue", target, "mqueue", flags, NULL) < 0) fail(16, "mount mqueue");
            continue;
        } else if (strcmp(t, "devpts") == 0) {
            char o[600];
            snprintf(o, sizeof o, "newinstance%s%s", data[0] ? "," : "", data);
            if (mount("devpts", target, "devpts", flags, o) < 0) fail(16, "mount devpts");
            continue;
        } else if (strcmp(t, "tmpfs") == 0) {
            struct stat st;
            if (mount("tmpfs", target, "tmpfs", flags & ~MS_RDONLY, data) < 0) fail(16, "mount tmpfs");
            if (stat(p, &st) == 0) {
                if (chown(target, st.st_uid, st.st_gid) < 0 || chmod(target, st.st_mode & 07777) < 0) fail(16, "own tmpfs");
                copy_tree(p, target, st.st_dev, 0);
            }
            if ((flags & MS_RDONLY) && mount(NULL, target, NULL, MS_REMOUNT | flags, data) < 0) fail(16, "remount tmpfs read-only");
            continue;
        } else if (strcmp(t, "cgroup") == 0 || strcmp(t, "cgroup2") == 0) {
            /* its own cgroup namespace's view; where the kernel refuses (v1 in a user
             * namespace) nothing: the template's would show the other sandboxes' */
            mount(t, target, t, flags, data);
            continue;
        }
        /* everything else: a bind of the template's, with its flags */
        if (mount(p, target, NULL, MS_BIND, NULL) < 0 || mount(NULL, target, NULL, MS_BIND | MS_REMOUNT | flags, NULL) < 0) {
            char what[4200];
            snprintf(what, sizeof what, "bind %s (%s)", p, t);
            fail(16, what);
        }
    }
    if (chdir(SCRATCH "/root") < 0 || syscall(SYS_pivot_root, ".", ".") < 0) fail(17, "pivot_root");
    if (umount2(".", MNT_DETACH) < 0) fail(18, "detach the template's root");
    if (chdir("/") < 0) fail(18, "chdir /");
}

static void loopback_up(void)
{
    int s = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    struct ifreq ifr = { 0 };
    strcpy(ifr.ifr_name, "lo");
    if (s < 0 || ioctl(s, SIOCGIFFLAGS, &ifr) < 0) fail(20, "the loopback interface");
    ifr.ifr_flags |= IFF_UP | IFF_RUNNING;
    if (ioctl(s, SIOCSIFFLAGS, &ifr) < 0) fail(20, "bring the loopback interface up");
    close(s);
}

/* The pool's capabilities and filters; the listener goes to the agent. */
static void lock_down(const struct spawn_req *r)
{
    if (r->no_new_privs && prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) < 0) fail(30, "no_new_privs");
    for (int cap = 0; cap <= 63; cap++)
        if (!(r->bounding & (1ULL << cap)) && prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) < 0 && errno != EINVAL)
            fail(31, "drop from the bounding set");
    int listener = -1;
    for (int i = 0; i < nfilters; i++) {
        long fd = syscall(SYS_seccomp, SECCOMP_SET_MODE_FILTER, filters[i].flags, &filters[i].prog);
        if (fd < 0) fail(32, "load a seccomp filter");
        if (filters[i].flags & SECCOMP_FILTER_FLAG_NEW_LISTENER) listener = (int)fd;
    }
    /* from here on a trapped call waits for the sentry: hand the listener over first */
    if (listener >= 0) {
        char cbuf[CMSG_SPACE(sizeof(int))] = { 0 };
        struct reply rep = { 5, 0, getpid(), 0 };
        struct iovec iov = { &rep, sizeof rep };
        struct msghdr mh = { .msg_iov = &iov, .msg_iovlen = 1, .msg_control = cbuf, .msg_controllen = sizeof cbuf };
        struct cmsghdr *c = CMSG_FIRSTHDR(&mh);
        c->cmsg_level = SOL_SOCKET;
        c->cmsg_type = SCM_RIGHTS;
        c->cmsg_len = CMSG_LEN(sizeof(int));
        memcpy(CMSG_DATA(c), &listener, sizeof(int));
        if (sendmsg(CHAN, &mh, MSG_NOSIGNAL) < 0) fail(33, "hand over the listener");
        close(listener);
    }
    if (prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0) < 0 && errno != EINVAL) fail(34, "clear ambient capabilities");
    struct __user_cap_header_struct h = { _LINUX_CAPABILITY_VERSION_3, 0 };
    struct __user_cap_data_struct d[2] = {
        { (uint32_t)r->effective, (uint32_t)r->permitted, (uint32_t)r->inheritable },
        { (uint32_t)(r->effective >> 32), (uint32_t)(r->permitted >> 32), (uint32_t)(r->inheritable >> 32) },
    };
    if (syscall(SYS_capset, &h, d) < 0) fail(35, "set capabilities");
    for (int cap = 0; cap <= 63; cap++)
        if ((r->ambient & (1ULL << cap)) && prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_RAISE, cap, 0, 0) < 0)
            fail(36, "raise an ambient capability");
}

/* In the child of a spawn: become the sandbox (never returns). */
static void become_sandbox(const struct spawn_req *r, int *cg, int ncg)
{
    for (int i = 0; i < ncg; i++) {
        if (write(cg[i], "0", 1) < 0) fail(1, "join the sandbox's cgroup");
        close(cg[i]);
    }
    syscall(SYS_close_range, CHAN + 1, ~0U, 0);  /* the spawner's signalfd and the other sandboxes' fds */
    memset(kids, 0, sizeof kids);  /* the spawner's children are not ours */
    if (unshare(CLONE_NEWCGROUP) < 0) fail(2, "new cgroup namespace");
    make_root(r);
    int null = open("/dev/null", O_RDWR | O_CLOEXEC);
    if (null < 0) fail(19, "open /dev/null");
    for (int i = 0; i < 3; i++) dup2(null, i);
    close(null);
    if (r->clone_flags & CLONE_NEWNET) loopback_up();
    lock_down(r);
    _exit(serve());
}


#ifndef CLONE_NEWTIME
#define CLONE_NEWTIME 0x80
#endif
/* The spawner's own boot clock offset from the host's (its time namespace's),
 * read before its first unshare (after it, timens_offsets shows the children's). */
static int64_t own_boottime_ns;

static void read_own_offset(void)
{
    FILE *f = fopen("/proc/self/timens_offsets", "re");
    char name[32];
    long long sec, nsec;
    if (!f) return;  /* no time namespaces: new_time_namespace() fails and says why */
    while (fscanf(f, "%31s %lld %lld", name, &sec, &nsec) == 3)
        if (strcmp(name, "boottime") == 0 || strcmp(name, "7") == 0)
            own_boottime_ns = sec * 1000000000LL + nsec;
    fclose(f);
}

/* The next child starts a time namespace whose boot clock starts now (at 1 s:
 * an offset may not make it negative), as a zentry container's does
 * (sentry/views.py enter_time_namespace): /proc/uptime and the start times in
 * /proc/PID/stat count from the sandbox's start. Each call makes a new one;
 * only children made after it enter it. */
static int new_time_namespace(void)
{
    struct timespec now;
    if (clock_gettime(CLOCK_BOOTTIME, &now) < 0 || unshare(CLONE_NEWTIME) < 0) return -1;
    /* offsets are from the host's clock: ours is the host's plus our own offset */
    int64_t host = (int64_t)now.tv_sec * 1000000000LL + now.tv_nsec - own_boottime_ns;
    int64_t seconds = host / 1000000000LL - 1;
    char line[64];
    int len = snprintf(line, sizeof line, "boottime %lld 0\n", (long long)-(seconds > 0 ? seconds : 0));
    int fd = open("/proc/self/timens_offsets", O_WRONLY | O_CLOEXEC);
    if (fd < 0) return -1;
    ssize_t n = write(fd, line, len);
    int saved = errno;
    close(fd);
    errno = saved;
    return n == len ? 0 : -1;
}

static void spawn_request(void)
{
    int fds[1 + MAX_CG], nfds = 0;
    char cbuf[CMSG_SPACE(sizeof fds)];
    struct iovec iov = { buf, sizeof buf };
    struct msghdr mh = { .msg_iov = &iov, .msg_iovlen = 1, .msg_control = cbuf, .msg_controllen = sizeof cbuf };
    ssize_t n = recvmsg(CHAN, &mh, MSG_CMSG_CLOEXEC);
    if (n < 0 && errno == EINTR) return;
    if (n <= 0) {  /* the agent is gone: the template ends, and every sandbox with it */
        kill(-1, SIGKILL);
        _exit(0);
    }
    for (struct cmsghdr *c = CMSG_FIRSTHDR(&mh); c; c = CMSG_NXTHDR(&mh, c))
        if (c->cmsg_level == SOL_SOCKET && c->cmsg_type == SCM_RIGHTS) {
            nfds = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
            memcpy(fds, CMSG_DATA(c), nfds * sizeof(int));
        }
    uint32_t op = n >= 4 ? ((uint32_t *)buf)[0] : 0;
    if (mh.msg_flags & MSG_CTRUNC) {  /* fds lost: a sandbox must not miss one of its cgroups */
        say(3, n >= 8 ? ((uint32_t *)buf)[1] : 0, 0, EMSGSIZE);
        goto done;
    }
    if (op == OP_FILTERS && n >= 8) {
        uint32_t count = ((uint32_t *)buf)[1];
        size_t off = 8;
        for (uint32_t i = 0; i < count && i < MAX_FILTERS && off + 8 <= (size_t)n; i++) {
            uint32_t flags = *(uint32_t *)(buf + off), len = *(uint32_t *)(buf + off + 4);
            off += 8;
            if (off + (size_t)len * sizeof(struct sock_filter) > (size_t)n) break;
            struct sock_filter *prog = malloc(len * sizeof *prog);
            if (!prog) break;
            memcpy(prog, buf + off, len * sizeof *prog);
            off += len * sizeof *prog;
            filters[nfilters].flags = flags;
            filters[nfilters].prog = (struct sock_fprog){ (unsigned short)len, prog };
            nfilters++;
        }
        say(1, 0, nfilters, 0);
        goto done;
    }
    struct spawn_req r;
    if (op != OP_SPAWN || (size_t)n < sizeof r || nfds < 1) {
        say(3, n >= 8 ? ((uint32_t *)buf)[1] : 0, 0, EINVAL);
        goto done;
    }
    memcpy(&r, buf, sizeof r);
    int slot = -1;
    for (int i = 0; i < MAX_KIDS; i++)
        if (kids[i].pid == 0) { slot = i; break; }
    if (slot < 0) { say(3, r.id, 0, EAGAIN); goto done; }
    if ((r.clone_flags & CLONE_NEWTIME) && new_time_namespace() < 0) { say(3, r.id, 0, errno); goto done; }
    /* clone(2)'s flags cannot carry CLONE_NEWTIME (its bits are the exit signal's): unshared above */
    pid_t pid = (pid_t)syscall(SYS_clone, (unsigned long)((r.clone_flags & ~CLONE_NEWTIME) | SIGCHLD), NULL, NULL, NULL, 0);
    if (pid == 0) {
        if (dup2(fds[0], CHAN) < 0) _exit(1);
        become_sandbox(&r, fds + 1, nfds - 1);
    }
    if (pid < 0) { say(3, r.id, 0, errno); goto done; }
    kids[slot].pid = pid;
    kids[slot].id = r.id;
    say(1, r.id, pid, 0);
done:
    for (int i = 0; i < nfds; i++) close(fds[i]);
}

static int spawner(void)
{
    read_own_offset();
    return loop(spawn_request);
}

int main(int argc, char **argv)
{
    if (argc > 1 && strcmp(argv[1], "--spawner") == 0)
        return spawner();
    return serve();
}
