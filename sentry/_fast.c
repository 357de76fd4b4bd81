/* zentry.sentry._fast: the sentry's native fast path.
 *
 * A Loop polls the wake fd and every listener fd with the GIL released,
 * RECVs each notification and looks its syscall up in the listener's table of
 * answers supplied by Python (sentry/kernel.py builds it from
 * handlers.NATIVE). Two kinds of answer exist:
 *
 *   WRITE  write N precomputed bytes to the address in argument K, return V
 *          (uname): ID_VALID, then process_vm_writev, then SEND;
 *   OPEN   the open family (open, openat, openat2, creat; trapped only in a
 *          container created with strace on): answer CONTINUE, the kernel
 *          opens the file as the tracee (handlers/fs.py says why that is
 *          safe). With strace on, every notification goes to Python anyway.
 *
 * Everything else, and everything while the table is switched off (strace),
 * is handed back to Python: next() copies the notification into the caller's
 * buffer and returns (fd, 0). Python owns the policy and the slow path; this
 * file owns no decision of its own.
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
#include <linux/audit.h>
#include <linux/seccomp.h>
#include <poll.h>
#include <stdint.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/uio.h>
#include <unistd.h>

/* bump when the Python <-> C interface changes: kernel.py refuses a stale build */
#define FAST_ABI 6  /* 6: opens are continued, no views (they are a FUSE filesystem) */

#define KIND_NONE 0
#define KIND_WRITE 1
#define KIND_OPEN 2

#define HANDLED 0
#define HANDOFF 1


typedef struct {
    uint8_t kind;
    int8_t arg;        /* WRITE: the argument holding the address; OPEN: the path's */
    int64_t ret;
    char *data;
    size_t len;
} entry_t;

typedef struct {
    int fd;
    entry_t *table;
} listener_t;

typedef struct {
    PyObject_HEAD
    int wake_fd;
    int fast;  /* 0: hand every notification to Python (strace) */
    int max_nr;
    int n;
    int cap;
    listener_t **ls;
    struct pollfd *pfds;
    uint64_t *trapped, *errors, *continued;
    struct seccomp_notif notif;
} Loop;

/* ---- helpers (no Python objects, called without the GIL) ------------------------ */

static int send_resp(Loop *self, listener_t *l, int nr, int64_t val, int err, uint32_t flags) {
    struct seccomp_notif_resp resp;
    resp.id = self->notif.id;
    resp.val = err ? 0 : val;
    resp.error = -err;
    resp.flags = flags;
    self->trapped[nr]++;
    if (err) self->errors[nr]++;
    if (flags) self->continued[nr]++;
    if (ioctl(l->fd, SECCOMP_IOCTL_NOTIF_SEND, &resp) < 0 && errno != ENOENT) return -errno;
    return HANDLED;
}

static int respond(Loop *self, listener_t *l, int nr, int64_t val, int err) { return send_resp(self, l, nr, val, err, 0); }

/* 0: still pending; else the errno (ENOENT: the thread is gone) */
static int id_valid(listener_t *l, uint64_t id) {
    return ioctl(l->fd, SECCOMP_IOCTL_NOTIF_ID_VALID, &id) < 0 ? errno : 0;
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

/* an open: the kernel's (CONTINUE) */
static int do_open(Loop *self, listener_t *l) {
    return send_resp(self, l, self->notif.data.nr, 0, 0, SECCOMP_USER_NOTIF_FLAG_CONTINUE);
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
    self->cap = 8;
    self->ls = PyMem_Calloc(self->cap, sizeof *self->ls);
    self->pfds = PyMem_Calloc(self->cap + 1, sizeof *self->pfds);
    self->trapped = PyMem_Calloc(self->max_nr + 1, sizeof(uint64_t));
    self->errors = PyMem_Calloc(self->max_nr + 1, sizeof(uint64_t));
    self->continued = PyMem_Calloc(self->max_nr + 1, sizeof(uint64_t));
    if (!self->ls || !self->pfds || !self->trapped || !self->errors || !self->continued) {
        PyErr_NoMemory();
        return -1;
    }
    self->pfds[0].fd = self->wake_fd;
    self->pfds[0].events = POLLIN;
    return 0;
}

static void free_listener(Loop *self, listener_t *l) {
    if (l->table) {
        for (int i = 0; i <= self->max_nr; i++) PyMem_Free(l->table[i].data);
        PyMem_Free(l->table);
    }
    PyMem_Free(l);
}

static void Loop_dealloc(Loop *self) {
    for (int i = 0; i < self->n; i++) free_listener(self, self->ls[i]);
    PyMem_Free(self->ls);
    PyMem_Free(self->pfds);
    PyMem_Free(self->trapped);
    PyMem_Free(self->errors);
    PyMem_Free(self->continued);
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

/* add(fd, entries): entries are (nr, "write", arg, data, ret) or (nr, "open", path_arg) */
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
        } else if (!strcmp(kind, "open") && PyTuple_GET_SIZE(t) == 3) {
            int p = arg_index(t, 2, 0);
            if (p < 0) goto fail;
            *e = (entry_t){.kind = KIND_OPEN, .arg = (int8_t)p};
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

/* next(buffer) -> (fd, code); see the top of this file */
static PyObject *Loop_next(Loop *self, PyObject *arg) {
    Py_buffer buf;
    if (PyObject_GetBuffer(arg, &buf, PyBUF_WRITABLE) < 0) return NULL;
    if ((size_t)buf.len < sizeof(struct seccomp_notif)) {
        PyBuffer_Release(&buf);
        return PyErr_Format(PyExc_ValueError, "buffer smaller than seccomp_notif");
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
                else if (e->kind == KIND_OPEN) r = do_open(self, l);
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

static PyObject *list_of(const uint64_t *v, int n) {
    PyObject *t = PyList_New(n);
    if (!t) return NULL;
    for (int i = 0; i < n; i++) {
        PyObject *a = PyLong_FromUnsignedLongLong(v[i]);
        if (!a) {
            Py_DECREF(t);
            return NULL;
        }
        PyList_SET_ITEM(t, i, a);
    }
    return t;
}

/* counts() -> (trapped, errors, continued): what the fast path answered, by syscall number */
static PyObject *Loop_counts(Loop *self, PyObject *Py_UNUSED(ignored)) {
    PyObject *t = list_of(self->trapped, self->max_nr + 1), *e = list_of(self->errors, self->max_nr + 1),
             *c = list_of(self->continued, self->max_nr + 1);
    if (!t || !e || !c) {
        Py_XDECREF(t);
        Py_XDECREF(e);
        Py_XDECREF(c);
        return NULL;
    }
    return Py_BuildValue("(NNN)", t, e, c);
}

static PyMethodDef Loop_methods[] = {
    {"add", (PyCFunction)Loop_add, METH_VARARGS, "add(fd, entries): serve listener fd with these precomputed answers"},
    {"remove", (PyCFunction)Loop_remove, METH_O, "remove(fd) -> bool: stop polling fd (does not close it)"},
    {"next", (PyCFunction)Loop_next, METH_O, "next(buffer) -> (fd, code): serve until Python is needed"},
    {"counts", (PyCFunction)Loop_counts, METH_NOARGS, "counts() -> (trapped, errors, continued) answered natively"},
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
