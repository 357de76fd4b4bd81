/* zentry.sentry._fast: the sentry's native fast path.
 *
 * A Loop polls the wake fd and every listener fd with the GIL released,
 * RECVs each notification and looks its syscall up in the listener's table of
 * answers supplied by Python (sentry/kernel.py builds it from
 * handlers.NATIVE). Two kinds of answer exist:
 *
 *   WRITE  write N precomputed bytes to the address in argument K, return V
 *          (uname): ID_VALID, then process_vm_writev, then SEND;
 *   OPEN   the open family (open, openat, creat): read the path from tracee
 *          memory, ID_VALID, openat2(RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS)
 *          from the container's root, ADDFD | SEND. The same steps and errnos
 *          as handlers/fs.py, opened as the tracee (its fsuid, fsgid and
 *          groups, switched for this thread only and back, as
 *          tracee.FsIdentity); every case the Python handler treats specially
 *          (/proc/ and /dev/ paths, an unknown or per-call root, a cwd outside
 *          the root, more than MAX_GROUPS groups) is handed back.
 *
 * Everything else, and everything while the table is switched off (strace),
 * is handed back to Python: next() copies the notification into the caller's
 * buffer and returns (fd, 0). Python owns the policy and the slow path; this
 * file owns no decision of its own. Never answers CONTINUE.
 *
 * next() returns (fd, code): code 0 = a notification is in the buffer;
 * code > 0 = poll revents other than POLLIN for fd (the wake fd: drain it);
 * code < 0 = -errno of a RECV/SEND on that listener that failed for another
 * reason than "the thread is gone" (Python fails the container closed).
 * Loop objects belong to one thread (the sentry's); only `fast` may be
 * written from another thread.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <structmember.h>

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <linux/audit.h>
#include <linux/capability.h>
#include <linux/seccomp.h>
#include <poll.h>
#include <stdint.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <unistd.h>

/* bump when the Python <-> C interface changes: kernel.py refuses a stale build */
#define FAST_ABI 4  /* 2: root tracees without DAC capabilities; 3: nor in another user namespace; 4: FIFOs handed over */

#define KIND_NONE 0
#define KIND_WRITE 1
#define KIND_OPEN 2

#define HANDLED 0
#define HANDOFF 1

#define PAGE 4096
#define PATH_MAX_ 4096
#define AT_FDCWD_ (-100)
#define RESOLVE_NO_MAGICLINKS_ 0x02
#define RESOLVE_IN_ROOT_ 0x10
#define O_TMPFILE_ (020000000 | O_DIRECTORY)
/* the kernel's VALID_OPEN_FLAGS, as handlers/fs.py */
#define VALID_OPEN_FLAGS_ (O_RDONLY | O_WRONLY | O_RDWR | O_CREAT | O_EXCL | O_NOCTTY | O_TRUNC | O_APPEND | \
    O_NONBLOCK | O_DSYNC | 020000 | O_DIRECT | 0100000 | O_DIRECTORY | O_NOFOLLOW | O_NOATIME | O_CLOEXEC | \
    O_PATH | 020000000 | 04000000)

#define O_PATH_FLAGS_ (O_DIRECTORY | O_NOFOLLOW | O_PATH | O_CLOEXEC)

#ifndef SYS_openat2
#define SYS_openat2 437
#endif
#ifndef SYS_pidfd_open
#define SYS_pidfd_open 434
#endif
/* <linux/pidfd.h>: PIDFD_THREAD = O_EXCL; PIDFD_GET_INFO with the 64-byte VER0 struct */
#define PIDFD_THREAD_ O_EXCL
#define PIDFD_GET_INFO_ 0xC040FF0BUL
#define PIDFD_INFO_PID_ 1ULL
#define PIDFD_INFO_CREDS_ 2ULL

struct open_how_ { uint64_t flags, mode, resolve; };

struct pidfd_info_ {
    uint64_t mask, cgroupid;
    uint32_t pid, tgid, ppid, ruid, rgid, euid, egid, suid, sgid, fsuid, fsgid;
    int32_t exit_code;
};

typedef struct {
    uint8_t kind;
    int8_t arg;        /* WRITE: the argument holding the address */
    int8_t dirfd_arg;  /* OPEN: argument indexes, -1 = none (AT_FDCWD / fixed flags) */
    int8_t path_arg;
    int8_t flags_arg;
    int8_t mode_arg;
    uint32_t fixed_flags;
    int64_t ret;
    char *data;
    size_t len;
} entry_t;

typedef struct {
    int fd;
    int foreign_userns;  /* -1: not known yet; 1: the tracees' user namespace is not ours */
    int root_fd;  /* our own dup of the container root (O_PATH), -1: hand opens back */
    size_t root_len;
    char root_link[PATH_MAX_ + 1];
    entry_t *table;
} listener_t;

#define TIDCACHE 256
#define MAX_GROUPS 64  /* a tracee with more supplementary groups is handed to Python */
typedef struct {
    int tid, pidfd;
    /* the thread's groups (/proc/TID/status), valid while its ids are `gids_for` (as tracee.Tracee.creds) */
    int ngroups;  /* -1: not read */
    uint32_t gids_for[11];
    gid_t groups[MAX_GROUPS];
} tidslot_t;

typedef struct {
    PyObject_HEAD
    int wake_fd;
    int fast;  /* 0: hand every notification to Python (strace) */
    int max_nr;
    int root_ids;  /* the sentry runs as uid 0 / gid 0 */
    struct __user_cap_data_struct own_caps[2];  /* the sentry thread's capabilities, restored after an open */
    uint64_t own_eff;
    int own_ngroups;  /* the sentry thread's own groups, restored after opening as a tracee */
    gid_t own_groups[MAX_GROUPS];
    int n;
    int cap;
    listener_t **ls;
    struct pollfd *pfds;
    uint64_t *trapped, *errors;
    uint64_t mediated;
    int handoff_fd;  /* a FIFO opened for a blocking read, handed to Python with its notification (take_fd) */
    tidslot_t tids[TIDCACHE];
    struct seccomp_notif notif;
    char path[PATH_MAX_ + 1];
    char inner[2 * PATH_MAX_ + 2];
    char base[PATH_MAX_ + 1];
} Loop;

/* ---- helpers (no Python objects, called without the GIL) ------------------------ */

static int respond(Loop *self, listener_t *l, int nr, int64_t val, int err) {
    struct seccomp_notif_resp resp;
    resp.id = self->notif.id;
    resp.val = err ? 0 : val;
    resp.error = -err;
    resp.flags = 0;
    self->trapped[nr]++;
    if (err) self->errors[nr]++;
    if (ioctl(l->fd, SECCOMP_IOCTL_NOTIF_SEND, &resp) < 0 && errno != ENOENT) return -errno;
    return HANDLED;
}

/* 0: still pending; else the errno (ENOENT: the thread is gone) */
static int id_valid(listener_t *l, uint64_t id) {
    return ioctl(l->fd, SECCOMP_IOCTL_NOTIF_ID_VALID, &id) < 0 ? errno : 0;
}

static void tid_forget(tidslot_t *s) {
    if (s->pidfd >= 0) close(s->pidfd);
    s->pidfd = -1;
    s->tid = 0;
    s->ngroups = -1;
}

/* The ids of thread tid through a cached thread pidfd (as tracee.Tracees): its slot, or NULL with *err set.
 * info->pid .. info->fsgid are the 11 ids. */
static tidslot_t *tracee_ids(Loop *self, int tid, struct pidfd_info_ *info, int *err) {
    tidslot_t *s = &self->tids[(unsigned)tid % TIDCACHE];
    if (s->tid == tid && s->pidfd >= 0) {
        memset(info, 0, sizeof *info);
        info->mask = PIDFD_INFO_PID_ | PIDFD_INFO_CREDS_;
        if (ioctl(s->pidfd, PIDFD_GET_INFO_, info) == 0) return s;
    }
    tid_forget(s);  /* empty, another TID, or that thread is gone (its TID may be someone else's now) */
    int fd = (int)syscall(SYS_pidfd_open, tid, PIDFD_THREAD_);
    if (fd < 0) {
        *err = errno;
        return NULL;
    }
    memset(info, 0, sizeof *info);
    info->mask = PIDFD_INFO_PID_ | PIDFD_INFO_CREDS_;
    if (ioctl(fd, PIDFD_GET_INFO_, info) < 0) {
        close(fd);
        *err = ESRCH;
        return NULL;
    }
    s->tid = tid;
    s->pidfd = fd;
    return s;
}

/* the supplementary groups of s->tid for these ids: 0, or -1 (unreadable, too many: hand to Python) */
static int tracee_groups(tidslot_t *s, const struct pidfd_info_ *info) {
    if (s->ngroups >= 0 && !memcmp(s->gids_for, &info->pid, sizeof s->gids_for)) return 0;
    char path[64], text[8192];
    snprintf(path, sizeof path, "/proc/%d/status", s->tid);
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return -1;
    ssize_t n = read(fd, text, sizeof text - 1);
    close(fd);
    if (n <= 0) return -1;
    text[n] = 0;
    char *line = strstr(text, "\nGroups:");
    if (!line) return -1;
    line += 8;
    char *end = strchr(line, '\n');
    if (!end) return -1;  /* cut short: more groups than fit here */
    int k = 0;
    while (line < end) {
        while (line < end && (*line == ' ' || *line == '\t')) line++;
        if (line >= end) break;
        if (k == MAX_GROUPS) return -1;
        char *after;
        unsigned long g = strtoul(line, &after, 10);
        if (after == line) return -1;
        s->groups[k++] = (gid_t)g;
        line = after;
    }
    s->ngroups = k;
    memcpy(s->gids_for, &info->pid, sizeof s->gids_for);
    return 0;
}

/* CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH, CAP_FOWNER: what lets root's opens bypass permissions */
#define DAC_CAPS ((1ULL << 1) | (1ULL << 2) | (1ULL << 3))

/* The thread's effective capabilities, asked now (capget with its tid: one syscall; they change
 * with capset and execve, without its ids changing). The thread is blocked in its trapped call. */
static int tracee_cap_eff(int tid, uint64_t *cap) {
    struct __user_cap_header_struct h = {_LINUX_CAPABILITY_VERSION_3, tid};
    struct __user_cap_data_struct d[2];
    if (syscall(SYS_capget, &h, d) < 0) return -1;
    *cap = (uint64_t)d[0].effective | ((uint64_t)d[1].effective << 32);
    return 0;
}

/* This thread's effective set (raw capset: capabilities are per thread); 0 or -1 */
static int set_own_eff(Loop *self, uint64_t eff) {
    struct __user_cap_header_struct h = {_LINUX_CAPABILITY_VERSION_3, 0};
    struct __user_cap_data_struct d[2];
    memcpy(d, self->own_caps, sizeof d);
    d[0].effective = (uint32_t)eff;
    d[1].effective = (uint32_t)(eff >> 32);
    return (int)syscall(SYS_capset, &h, d);
}

/* Become the tracee for file access (this thread only: raw syscalls), as tracee.FsIdentity.enter.
 * 0 on success, verified; -1 after undoing a partial switch. */
static int enter_identity(Loop *self, const tidslot_t *s, uint32_t fsuid, uint32_t fsgid);
static void leave_identity(Loop *self) {
    syscall(SYS_setfsuid, 0);
    syscall(SYS_setfsgid, 0);
    syscall(SYS_setgroups, (size_t)self->own_ngroups, self->own_groups);
}
static int enter_identity(Loop *self, const tidslot_t *s, uint32_t fsuid, uint32_t fsgid) {
    if (syscall(SYS_setgroups, (size_t)s->ngroups, s->groups) < 0) goto undo;
    syscall(SYS_setfsgid, fsgid);
    syscall(SYS_setfsuid, fsuid);
    /* setfsuid/setfsgid report no failure: read them back (-1 is never valid, so nothing changes) */
    if ((uint32_t)syscall(SYS_setfsuid, -1) != fsuid || (uint32_t)syscall(SYS_setfsgid, -1) != fsgid) goto undo;
    return 0;
undo:
    leave_identity(self);
    return -1;
}

static int do_write(Loop *self, listener_t *l, entry_t *e) {
    struct seccomp_notif *n = &self->notif;
    uint64_t addr = n->data.args[e->arg];
    int err = id_valid(l, n->id);
    if (err) return respond(self, l, n->data.nr, 0, err == ENOENT ? ESRCH : err);
    if (addr == 0) return respond(self, l, n->data.nr, 0, EFAULT);
    struct iovec local = {e->data, e->len}, remote = {(void *)(uintptr_t)addr, e->len};
    if (process_vm_writev(n->pid, &local, 1, &remote, 1, 0) != (ssize_t)e->len)
        return respond(self, l, n->data.nr, 0, EFAULT);
    return respond(self, l, n->data.nr, e->ret, 0);
}

/* the NUL-terminated path at addr (two iovecs: up to the page end, then the rest): 0 or an errno */
static int read_path(Loop *self, int pid, uint64_t addr) {
    if (addr == 0) return EFAULT;
    size_t limit = PATH_MAX_, first = PAGE - (addr % PAGE);
    if (first > limit) first = limit;
    struct iovec local = {self->path, limit};
    struct iovec remote[2] = {{(void *)(uintptr_t)addr, first}, {(void *)(uintptr_t)(addr + first), limit - first}};
    ssize_t got = process_vm_readv(pid, &local, 1, remote, limit > first ? 2 : 1, 0);
    if (got <= 0) return EFAULT;
    if (!memchr(self->path, 0, (size_t)got)) return (size_t)got >= limit ? ENAMETOOLONG : EFAULT;
    return 0;
}

static int starts(const char *s, const char *prefix) { return strncmp(s, prefix, strlen(prefix)) == 0; }

static int do_open(Loop *self, listener_t *l, entry_t *e) {
    struct seccomp_notif *n = &self->notif;
    int nr = n->data.nr, tid = n->pid, err;
    int dirfd = e->dirfd_arg < 0 ? AT_FDCWD_ : (int)(uint32_t)n->data.args[e->dirfd_arg];
    uint64_t flags = e->flags_arg < 0 ? e->fixed_flags : (n->data.args[e->flags_arg] & 0xFFFFFFFFULL);
    uint64_t mode = n->data.args[e->mode_arg];
    struct pidfd_info_ info;
    tidslot_t *slot;
    int switched = 0;

    if ((err = read_path(self, tid, n->data.args[e->path_arg]))) return respond(self, l, nr, 0, err);
    if ((err = id_valid(l, n->id))) {
        if (err != ENOENT) return respond(self, l, nr, 0, err);
        self->trapped[nr]++;  /* the thread is gone: nothing to answer */
        return HANDLED;
    }
    if (!(slot = tracee_ids(self, tid, &info, &err))) return respond(self, l, nr, 0, err);
    if (!self->root_ids) return HANDOFF;  /* the sentry cannot become the tracee: Python decides */
    if (!self->path[0]) return respond(self, l, nr, 0, ENOENT);
    flags &= VALID_OPEN_FLAGS_;
    if (!((flags & O_CREAT) || (flags & O_TMPFILE_) == O_TMPFILE_)) mode = 0;
    mode &= 07777;
    if (flags & O_PATH) flags &= O_PATH_FLAGS_;  /* as the kernel's build_open_how */
    if (l->root_fd < 0) return HANDOFF;

    const char *inner = self->path;
    if (self->path[0] != '/') {
        char link[64];
        if (dirfd == AT_FDCWD_) snprintf(link, sizeof link, "/proc/%d/cwd", tid);
        else snprintf(link, sizeof link, "/proc/%d/fd/%d", tid, dirfd);
        ssize_t blen = readlink(link, self->base, PATH_MAX_);
        if (blen < 0) return respond(self, l, nr, 0, dirfd != AT_FDCWD_ ? EBADF : ENOENT);
        self->base[blen] = 0;
        /* the base as a path inside the root, as fs._inner_path; outside or deleted: Python */
        static const char deleted[] = " (deleted)";
        size_t dl = sizeof deleted - 1;
        if (self->base[0] != '/' || ((size_t)blen >= dl && !memcmp(self->base + blen - dl, deleted, dl))) return HANDOFF;
        const char *where;
        size_t rl = l->root_len;
        if (rl == 1 && l->root_link[0] == '/') where = self->base;
        else if ((size_t)blen == rl && !memcmp(self->base, l->root_link, rl)) where = "/";
        else if ((size_t)blen > rl && !memcmp(self->base, l->root_link, rl) && self->base[rl] == '/') where = self->base + rl;
        else return HANDOFF;
        size_t wl = strlen(where);
        while (wl > 0 && where[wl - 1] == '/') wl--;
        memcpy(self->inner, where, wl);
        self->inner[wl] = '/';
        strcpy(self->inner + wl + 1, self->path);
        inner = self->inner;
    }
    if (starts(inner, "/proc/") || starts(inner, "/dev/")) return HANDOFF;  /* synthesized or the tracee's own fds */

    /* O_PATH takes no other flags in openat2 (EINVAL) and cannot block or acquire a terminal */
    uint64_t ours = (flags & O_PATH) ? O_CLOEXEC : (O_CLOEXEC | O_NOCTTY | O_NONBLOCK);
    struct open_how_ how = {(flags | ours) & 0xFFFFFFFFULL, mode, RESOLVE_IN_ROOT_ | RESOLVE_NO_MAGICLINKS_};
    uint64_t drop = 0;
    if (info.fsuid == 0) {
        /* root keeps fsuid 0 but not necessarily root's file capabilities (runc's default set has
         * none): drop from this thread the ones the tracee lacks, as tracee.FsIdentity does */
        uint64_t cap;
        if (l->foreign_userns < 0) {
            /* fixed for a listener's life: the sentry refuses unshare/setns/clone of a user namespace */
            char p[64];
            struct stat theirs, ours;
            snprintf(p, sizeof p, "/proc/%d/ns/user", tid);
            if (stat(p, &theirs) < 0 || stat("/proc/thread-self/ns/user", &ours) < 0) return HANDOFF;
            l->foreign_userns = theirs.st_ino != ours.st_ino || theirs.st_dev != ours.st_dev;
        }
        if (l->foreign_userns) cap = 0;  /* its capabilities hold in its own namespace, not in ours */
        else if (tracee_cap_eff(tid, &cap) < 0) return HANDOFF;
        drop = DAC_CAPS & self->own_eff & ~cap;
    }
    if (info.fsuid != 0 || info.fsgid != 0 || drop) {
        /* open as the tracee (its fsuid, fsgid and groups): the kernel's own permission checks */
        if (tracee_groups(slot, &info) < 0 || enter_identity(self, slot, info.fsuid, info.fsgid) < 0) return HANDOFF;
        switched = 1;
    }
    if (drop && set_own_eff(self, self->own_eff & ~drop) < 0) {
        leave_identity(self);
        return HANDOFF;
    }
    int fd = -1;
    for (int i = 0; i < 8; i++) {  /* openat2 IN_ROOT answers EAGAIN when a rename races its ".." walk */
        fd = (int)syscall(SYS_openat2, l->root_fd, inner, &how, sizeof how);
        if (fd >= 0 || errno != EAGAIN) break;
    }
    err = fd < 0 ? errno : 0;
    if (drop) set_own_eff(self, self->own_eff);
    if (switched) leave_identity(self);
    if (fd < 0) {
        /* a FIFO without a reader: a blocking open must wait for one, which Python's waiter does */
        if (err == ENXIO && (flags & O_ACCMODE) == O_WRONLY && !(flags & O_NONBLOCK)) return HANDOFF;
        return respond(self, l, nr, 0, err);
    }
    if ((flags & O_ACCMODE) == O_RDONLY && !(flags & O_NONBLOCK) && !(flags & O_PATH)) {
        /* a FIFO read blocks until a writer comes: Python waits for it with this very fd (closing it
         * and reopening would let a writer pair with a reader that then vanishes) */
        struct stat st;
        if (fstat(fd, &st) == 0 && S_ISFIFO(st.st_mode)) {
            self->handoff_fd = fd;
            return HANDOFF;
        }
    }
    if (!(flags & O_NONBLOCK) && !(flags & O_PATH)) {
        /* opened non-blocking so a FIFO cannot stall the sentry; give back what was asked */
        int fl = fcntl(fd, F_GETFL);
        if (fl < 0 || fcntl(fd, F_SETFL, fl & ~O_NONBLOCK) < 0) {
            err = errno;
            close(fd);
            return respond(self, l, nr, 0, err);
        }
    }
    self->mediated++;
    struct seccomp_notif_addfd add = {.id = n->id, .flags = SECCOMP_ADDFD_FLAG_SEND, .srcfd = (uint32_t)fd, .newfd = 0,
                                      .newfd_flags = (flags & O_CLOEXEC) ? O_CLOEXEC : 0};
    int r = ioctl(l->fd, SECCOMP_IOCTL_NOTIF_ADDFD, &add);
    err = r < 0 ? errno : 0;
    close(fd);
    if (r >= 0 || err == ENOENT) {  /* installed and answered, or the thread is gone */
        self->trapped[nr]++;
        return HANDLED;
    }
    return respond(self, l, nr, 0, err);  /* e.g. EMFILE in the tracee: the call fails with it */
}

/* ---- the Loop type ------------------------------------------------------------------- */

static int Loop_init(Loop *self, PyObject *args, PyObject *kw) {
    static char *names[] = {"wake_fd", "max_nr", NULL};
    if (!PyArg_ParseTupleAndKeywords(args, kw, "ii", names, &self->wake_fd, &self->max_nr)) return -1;
    if (self->max_nr < 0 || self->max_nr > 4096) {
        PyErr_SetString(PyExc_ValueError, "max_nr out of range");
        return -1;
    }
    self->fast = 1;
    self->handoff_fd = -1;
    self->root_ids = geteuid() == 0 && getegid() == 0;
    self->own_ngroups = getgroups(MAX_GROUPS, self->own_groups);
    if (self->own_ngroups < 0) self->root_ids = 0;  /* cannot restore them: never switch identity */
    struct __user_cap_header_struct h = {_LINUX_CAPABILITY_VERSION_3, 0};
    if (syscall(SYS_capget, &h, self->own_caps) < 0) self->root_ids = 0;  /* cannot restore them either */
    self->own_eff = (uint64_t)self->own_caps[0].effective | ((uint64_t)self->own_caps[1].effective << 32);
    self->cap = 8;
    self->ls = PyMem_Calloc(self->cap, sizeof *self->ls);
    self->pfds = PyMem_Calloc(self->cap + 1, sizeof *self->pfds);
    self->trapped = PyMem_Calloc(self->max_nr + 1, sizeof(uint64_t));
    self->errors = PyMem_Calloc(self->max_nr + 1, sizeof(uint64_t));
    if (!self->ls || !self->pfds || !self->trapped || !self->errors) {
        PyErr_NoMemory();
        return -1;
    }
    for (int i = 0; i < TIDCACHE; i++) {
        self->tids[i].tid = 0;
        self->tids[i].pidfd = -1;
        self->tids[i].ngroups = -1;
    }
    self->pfds[0].fd = self->wake_fd;
    self->pfds[0].events = POLLIN;
    return 0;
}

static void free_listener(Loop *self, listener_t *l) {
    if (l->root_fd >= 0) close(l->root_fd);
    if (l->table) {
        for (int i = 0; i <= self->max_nr; i++) PyMem_Free(l->table[i].data);
        PyMem_Free(l->table);
    }
    PyMem_Free(l);
}

static void Loop_dealloc(Loop *self) {
    if (self->handoff_fd >= 0) close(self->handoff_fd);
    for (int i = 0; i < self->n; i++) free_listener(self, self->ls[i]);
    for (int i = 0; i < TIDCACHE; i++)
        if (self->tids[i].pidfd > 0) close(self->tids[i].pidfd);  /* 0: never initialised */
    PyMem_Free(self->ls);
    PyMem_Free(self->pfds);
    PyMem_Free(self->trapped);
    PyMem_Free(self->errors);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static int find(Loop *self, int fd) {
    for (int i = 0; i < self->n; i++)
        if (self->ls[i]->fd == fd) return i;
    return -1;
}

static int arg_index(PyObject *t, Py_ssize_t i, int lo) {
    long v = PyLong_AsLong(PyTuple_GET_ITEM(t, i));
    if (v == -1 && PyErr_Occurred()) return -2;
    if (v < lo || v > 5) {
        PyErr_Format(PyExc_ValueError, "argument index %ld out of range", v);
        return -2;
    }
    return (int)v;
}

/* add(fd, entries): entries are (nr, "write", arg, data, ret) or
 * (nr, "open", dirfd_arg, path_arg, flags_arg, fixed_flags, mode_arg), -1 = none */
static PyObject *Loop_add(Loop *self, PyObject *args) {
    int fd;
    PyObject *entries;
    if (!PyArg_ParseTuple(args, "iO!", &fd, &PyList_Type, &entries)) return NULL;
    if (find(self, fd) >= 0) {
        PyErr_Format(PyExc_ValueError, "fd %d already added", fd);
        return NULL;
    }
    listener_t *l = PyMem_Calloc(1, sizeof *l);
    if (!l) return PyErr_NoMemory();
    l->fd = fd;
    l->foreign_userns = -1;
    l->root_fd = -1;
    l->table = PyMem_Calloc(self->max_nr + 1, sizeof(entry_t));
    if (!l->table) {
        PyMem_Free(l);
        return PyErr_NoMemory();
    }
    for (Py_ssize_t i = 0; i < PyList_GET_SIZE(entries); i++) {
        PyObject *t = PyList_GET_ITEM(entries, i);
        const char *kind;
        int nr;
        if (!PyTuple_Check(t) || PyTuple_GET_SIZE(t) < 2 || !PyArg_Parse(PyTuple_GET_ITEM(t, 0), "i", &nr) ||
            !PyArg_Parse(PyTuple_GET_ITEM(t, 1), "s", &kind)) {
            if (!PyErr_Occurred()) PyErr_SetString(PyExc_TypeError, "entry must be (nr, kind, ...)");
            goto fail;
        }
        if (nr < 0 || nr > self->max_nr) {
            PyErr_Format(PyExc_ValueError, "syscall %d out of range", nr);
            goto fail;
        }
        entry_t *e = &l->table[nr];
        if (!strcmp(kind, "write") && PyTuple_GET_SIZE(t) == 5) {
            char *data;
            Py_ssize_t len;
            int a = arg_index(t, 2, 0);
            if (a < 0 || PyBytes_AsStringAndSize(PyTuple_GET_ITEM(t, 3), &data, &len) < 0) goto fail;
            e->ret = PyLong_AsLongLong(PyTuple_GET_ITEM(t, 4));
            if (e->ret == -1 && PyErr_Occurred()) goto fail;
            if (len <= 0 || !(e->data = PyMem_Malloc(len))) {
                if (!PyErr_Occurred()) PyErr_SetString(PyExc_ValueError, "empty write");
                goto fail;
            }
            memcpy(e->data, data, len);
            e->len = (size_t)len;
            e->arg = (int8_t)a;
            e->kind = KIND_WRITE;
        } else if (!strcmp(kind, "open") && PyTuple_GET_SIZE(t) == 7) {
            int d = arg_index(t, 2, -1), p = arg_index(t, 3, 0), f = arg_index(t, 4, -1), m = arg_index(t, 6, 0);
            unsigned long fixed = PyLong_AsUnsignedLong(PyTuple_GET_ITEM(t, 5));
            if (d < -1 || p < 0 || f < -1 || m < 0 || PyErr_Occurred()) goto fail;
            *e = (entry_t){.kind = KIND_OPEN, .dirfd_arg = d, .path_arg = p, .flags_arg = f, .mode_arg = m,
                           .fixed_flags = (uint32_t)fixed};
        } else {
            PyErr_Format(PyExc_ValueError, "bad entry for syscall %d", nr);
            goto fail;
        }
    }
    if (self->n == self->cap) {
        int cap = self->cap * 2;
        listener_t **ls = PyMem_Realloc(self->ls, cap * sizeof *ls);
        if (!ls) goto nomem;
        self->ls = ls;
        struct pollfd *p = PyMem_Realloc(self->pfds, (cap + 1) * sizeof *p);
        if (!p) goto nomem;
        self->pfds = p;
        self->cap = cap;
    }
    self->ls[self->n] = l;
    self->pfds[self->n + 1] = (struct pollfd){fd, POLLIN, 0};
    self->n++;
    Py_RETURN_NONE;
nomem:
    PyErr_NoMemory();
fail:
    free_listener(self, l);
    return NULL;
}

static PyObject *Loop_remove(Loop *self, PyObject *arg) {
    int fd = PyLong_AsLong(arg);
    if (fd == -1 && PyErr_Occurred()) return NULL;
    int i = find(self, fd);
    if (i < 0) Py_RETURN_FALSE;
    free_listener(self, self->ls[i]);
    for (int j = i; j < self->n - 1; j++) {
        self->ls[j] = self->ls[j + 1];
        self->pfds[j + 1] = self->pfds[j + 2];
    }
    self->n--;
    Py_RETURN_TRUE;
}

/* set_root(fd, root_fd, link): the container's root (dup'ed) and its readlink; root_fd -1: hand opens back */
static PyObject *Loop_set_root(Loop *self, PyObject *args) {
    int fd, root_fd;
    const char *link;
    Py_ssize_t len;
    if (!PyArg_ParseTuple(args, "iiy#", &fd, &root_fd, &link, &len)) return NULL;
    int i = find(self, fd);
    if (i < 0) return PyErr_Format(PyExc_KeyError, "fd %d", fd);
    if (len > PATH_MAX_) return PyErr_Format(PyExc_ValueError, "root link too long");
    listener_t *l = self->ls[i];
    int dup = -1;
    if (root_fd >= 0 && (dup = fcntl(root_fd, F_DUPFD_CLOEXEC, 3)) < 0) return PyErr_SetFromErrno(PyExc_OSError);
    if (l->root_fd >= 0) close(l->root_fd);
    l->root_fd = dup;
    memcpy(l->root_link, link, len);
    l->root_link[len] = 0;
    l->root_len = (size_t)len;
    Py_RETURN_NONE;
}

/* next(buffer) -> (fd, code); see the top of this file */
static PyObject *Loop_next(Loop *self, PyObject *arg) {
    Py_buffer buf;
    if (PyObject_GetBuffer(arg, &buf, PyBUF_WRITABLE) < 0) return NULL;
    if ((size_t)buf.len < sizeof(struct seccomp_notif)) {
        PyBuffer_Release(&buf);
        return PyErr_Format(PyExc_ValueError, "buffer smaller than seccomp_notif");
    }
    if (self->handoff_fd >= 0) {  /* not taken by the handler of the last handoff */
        close(self->handoff_fd);
        self->handoff_fd = -1;
    }
    int rfd = -1, code = 0, perr = 0;
    Py_BEGIN_ALLOW_THREADS
    for (;;) {
        if (poll(self->pfds, self->n + 1, -1) < 0) {
            if (errno == EINTR) continue;
            perr = errno;
            break;
        }
        if (self->pfds[0].revents) {
            rfd = self->wake_fd;
            code = self->pfds[0].revents;
            break;
        }
        for (int i = 0; i < self->n && rfd < 0; i++) {
            short ev = self->pfds[i + 1].revents;
            listener_t *l = self->ls[i];
            if (!ev) continue;
            if (!(ev & POLLIN)) {
                rfd = l->fd;
                code = ev;
                break;
            }
            memset(&self->notif, 0, sizeof self->notif);  /* RECV into a dirty buffer fails with EINVAL */
            if (ioctl(l->fd, SECCOMP_IOCTL_NOTIF_RECV, &self->notif) < 0) {
                if (errno == ENOENT || errno == EINTR) continue;  /* the trapped thread was killed first */
                rfd = l->fd;
                code = -errno;
                break;
            }
            int nr = self->notif.data.nr, r = HANDOFF;
            if (__atomic_load_n(&self->fast, __ATOMIC_RELAXED) && nr >= 0 && nr <= self->max_nr &&
                self->notif.data.arch == AUDIT_ARCH_X86_64) {
                entry_t *e = &l->table[nr];
                if (e->kind == KIND_WRITE) r = do_write(self, l, e);
                else if (e->kind == KIND_OPEN) r = do_open(self, l, e);
            }
            if (r == HANDLED) continue;
            rfd = l->fd;
            if (r < 0) {
                code = r;
            } else {
                memcpy(buf.buf, &self->notif, sizeof self->notif);
                code = 0;
            }
        }
        if (rfd >= 0) break;
    }
    Py_END_ALLOW_THREADS
    PyBuffer_Release(&buf);
    if (perr) {
        errno = perr;
        return PyErr_SetFromErrno(PyExc_OSError);
    }
    return Py_BuildValue("(ii)", rfd, code);
}

/* take_fd() -> the fd handed over with the last notification (-1: none); the caller owns it */
static PyObject *Loop_take_fd(Loop *self, PyObject *Py_UNUSED(ignored)) {
    int fd = self->handoff_fd;
    self->handoff_fd = -1;
    return PyLong_FromLong(fd);
}

/* counts() -> (trapped, errors, mediated): what the fast path answered, by syscall number */
static PyObject *Loop_counts(Loop *self, PyObject *Py_UNUSED(ignored)) {
    PyObject *t = PyList_New(self->max_nr + 1), *e = PyList_New(self->max_nr + 1);
    if (!t || !e) goto fail;
    for (int i = 0; i <= self->max_nr; i++) {
        PyObject *a = PyLong_FromUnsignedLongLong(self->trapped[i]), *b = PyLong_FromUnsignedLongLong(self->errors[i]);
        if (!a || !b) {
            Py_XDECREF(a);
            Py_XDECREF(b);
            goto fail;
        }
        PyList_SET_ITEM(t, i, a);
        PyList_SET_ITEM(e, i, b);
    }
    return Py_BuildValue("(NNK)", t, e, (unsigned long long)self->mediated);
fail:
    Py_XDECREF(t);
    Py_XDECREF(e);
    return NULL;
}

static PyMethodDef Loop_methods[] = {
    {"add", (PyCFunction)Loop_add, METH_VARARGS, "add(fd, entries): serve listener fd with these precomputed answers"},
    {"remove", (PyCFunction)Loop_remove, METH_O, "remove(fd) -> bool: stop polling fd (does not close it)"},
    {"set_root", (PyCFunction)Loop_set_root, METH_VARARGS, "set_root(fd, root_fd, link): the container root opens start from"},
    {"next", (PyCFunction)Loop_next, METH_O, "next(buffer) -> (fd, code): serve until Python is needed"},
    {"counts", (PyCFunction)Loop_counts, METH_NOARGS, "counts() -> (trapped, errors, mediated) answered natively"},
    {"take_fd", (PyCFunction)Loop_take_fd, METH_NOARGS, "take_fd() -> the fd handed over with the last notification, or -1"},
    {NULL},
};

static PyMemberDef Loop_members[] = {
    {"fast", T_INT, offsetof(Loop, fast), 0, "answer from the tables (0: hand every notification to Python)"},
    {NULL},
};

static PyTypeObject LoopType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "zentry.sentry._fast.Loop",
    .tp_basicsize = sizeof(Loop),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "The sentry's native poll/RECV/answer loop (see the module source).",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)Loop_init,
    .tp_dealloc = (destructor)Loop_dealloc,
    .tp_methods = Loop_methods,
    .tp_members = Loop_members,
};

static struct PyModuleDef fastmodule = {PyModuleDef_HEAD_INIT, "_fast", "The sentry's native fast path.", -1, NULL, NULL, NULL, NULL, NULL};

PyMODINIT_FUNC PyInit__fast(void) {
    if (PyType_Ready(&LoopType) < 0) return NULL;
    PyObject *m = PyModule_Create(&fastmodule);
    if (!m) return NULL;
    Py_INCREF(&LoopType);
    if (PyModule_AddObject(m, "Loop", (PyObject *)&LoopType) < 0 || PyModule_AddIntConstant(m, "ABI", FAST_ABI) < 0) {
        Py_DECREF(&LoopType);
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
