/* The compiled event path: the BPF ring buffer walked, its records decoded
 * and closes joined with their opens, in one C loop instead of four Python
 * calls a connection.
 *
 * It is an accelerator, not a second definition. The layouts are the
 * kernel's own (bpf/event.h, included below, the header the BPF programs
 * fill); the Python objects made are those of tracer/events.py (its classes,
 * address and comm caches and their slow paths, handed over by
 * tracer/fastpath.py); and what it does is what the pure-Python path does
 * (tracer/probes/buffers.py read_ring, ProbeSession._on_record,
 * tracer/lifetimes.py closed_at), which stays the reference:
 * tests/unit/test_fastpath.py walks the same records, hostile ones included,
 * through both and requires the same events, tallies and table state.
 *
 * Opens are OpenConnections._opened's work; when its table is full (its
 * eviction of the oldest) they are handed to it.
 *
 * Bounds: every record is checked against the buffer it is read from, and a
 * record too short for its type is a decode error, as in Python.
 *
 * It also holds the other loop run per item thousands of times a second: the
 * scan of a process's fd table for its sockets (fd_sockets, the compiled
 * tracer/probes/procfs.py _scan_fd_dir, which stays the reference), done once
 * an interval for every process; and of the sock_diag replies, one message a
 * TCP socket (diag_messages, the bulk of tracer/probes/sock_diag.py
 * parse_datagram: it stops at the first message that is not a well-formed
 * socket and leaves that one, and the rest, to the Python parser, so errors
 * and the end of a dump have one definition).
 *
 * And the turn of the recorder's event rows into Arrow columns
 * (arrow_columns: the buffers tracer/sinks/table_writer.py
 * columns_of_rows hands to pyarrow), where pyarrow's own conversion of
 * Python lists stays the reference and the fallback: any column holding a
 * value this code does not convert exactly as pa.array would is left to it.
 *
 * The recorder's loop over a poll's events (event_rows: each Connect and
 * Accept as its connects or accepts row, RecordSink.on_events, whose Python
 * loop stays the definition; the rows' derived values, latency_us and
 * queue_wait_us, are the classes' own properties, called).
 *
 * And Histogram.add of a float (HistogramCore, the base class of
 * tracer/aggregate/histogram.py's Histogram: four adds a connection), where
 * the Python add stays the definition and takes every other case.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <structmember.h>   /* PyMemberDef (in Python.h itself from 3.12) */
#include <arpa/inet.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/socket.h>
#include <linux/bpf.h>      /* BPF_RINGBUF_*: the ring's record header, as buffers.py reads it */
#include <linux/types.h>
#include <linux/inet_diag.h>  /* struct inet_diag_msg, INET_DIAG_SKMEMINFO, INET_DIAG_SHUTDOWN */
#include <linux/netlink.h>    /* struct nlmsghdr, struct nlattr, NLM_F_DUMP_INTR */
#include <linux/sock_diag.h>  /* SOCK_DIAG_BY_FAMILY, SK_MEMINFO_* */

#include "bpf/event.h"

#define ABI_VERSION 8

/* What tracer/fastpath.py configures (references held until configured again). */
static PyObject *Connect_t, *Accept_t;        /* the event classes */
static PyObject *addr_cache, *addr_slow;      /* _ADDR_BY_RAW, _addr_by_raw */
static PyObject *comm_cache, *comm_slow;      /* _COMM_CACHE, comm_text */
static PyObject *outcome_names;               /* OUTCOMES */
static PyObject *outcome_unknown;             /* outcomes.ERROR */
static Py_ssize_t early_max;                  /* lifetimes._EARLY_MAX */
static Py_ssize_t max_open;                   /* lifetimes.MAX_OPEN */
static void front_clear(void);                /* the addr and comm front caches */
static PyObject *str_open, *str_early, *str_early_prev, *str_live, *str_active, *str_passive,
    *str_peaks, *str_opened;

/* Where each field of an event class lives in its instances, when the class
 * is a dataclass with __slots__ and nothing else to do at construction: then
 * an event is allocated and its slots filled here, without running the
 * generated __init__ (a third of the cost of making it). n == 0: call the
 * class (Python 3.9 has no slotted dataclasses; anything unexpected). */
#define MAX_FIELDS 16
struct layout {
    Py_ssize_t n;
    Py_ssize_t offset[MAX_FIELDS];
};
static struct layout connect_layout, accept_layout;

/* The fields the rows take, by name; where each is in the configured
 * field order (-1: not there, then getattr), set by configure. */
#define CONNECT_USED 14
#define ACCEPT_USED 11
static const char *connect_used[CONNECT_USED] = {
    "ts_start_ns", "pid", "tid", "comm", "family", "saddr", "sport", "daddr", "dport",
    "outcome", "err", "syn_retransmits", "netns", "cgroup_id"};
static const char *accept_used[ACCEPT_USED] = {
    "ts_ns", "pid", "comm", "family", "laddr", "lport", "raddr", "rport", "backlog_len",
    "backlog_max", "netns"};
static PyObject *connect_used_str[CONNECT_USED], *accept_used_str[ACCEPT_USED];
static Py_ssize_t connect_used_at[CONNECT_USED], accept_used_at[ACCEPT_USED];
static PyObject *str_latency_us, *str_queue_wait_us;
/* ... the fields latency_of and queue_wait_of take */
static const char *lat_used[2] = {"ts_start_ns", "ts_end_ns"};
static const char *wait_used[2] = {"ts_handshake_ns", "ts_ns"};
static PyObject *lat_used_str[2], *wait_used_str[2];
static Py_ssize_t lat_used_at[2], wait_used_at[2];
/* ... and the fields tally() takes (Collector._drain's loop) */
#define TC_USED 12
#define TA_USED 6
static const char *tc_used[TC_USED] = {
    "pid", "family", "daddr", "dport", "comm", "saddr", "netns", "outcome", "syn_retransmits",
    "ts_start_ns", "ts_end_ns", "cgroup_id"};
static const char *ta_used[TA_USED] = {"pid", "comm", "family", "laddr", "lport", "netns"};
static PyObject *tc_used_str[TC_USED], *ta_used_str[TA_USED];
static Py_ssize_t tc_used_at[TC_USED], ta_used_at[TA_USED];

static void used_at(PyObject *names, PyObject **used, Py_ssize_t *at, int n)
{
    for (int k = 0; k < n; k++) {
        at[k] = -1;
        for (Py_ssize_t i = 0; i < PyTuple_GET_SIZE(names); i++)
            if (PyUnicode_Check(PyTuple_GET_ITEM(names, i))
                    && PyUnicode_Compare(PyTuple_GET_ITEM(names, i), used[k]) == 0)
                at[k] = i;
    }
    PyErr_Clear();
}


static int configured(void)
{
    if (Connect_t == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "tracer._fastpath: configure() not called");
        return 0;
    }
    return 1;
}

/* The layout of `type` for `names` (its fields, in the order it takes them),
 * or n = 0 if its instances cannot be filled here: every name must be a
 * writable object slot of the class itself (a member descriptor), and the
 * class must make its instances with object's tp_new and have no
 * __post_init__ (dataclass __init__ then only stores its arguments). */
static int layout_of(PyObject *type, PyObject *names, struct layout *out)
{
    out->n = 0;
    if (!PyType_Check(type) || !PyTuple_Check(names) || PyTuple_GET_SIZE(names) > MAX_FIELDS)
        return 0;
    PyTypeObject *t = (PyTypeObject *)type;
    if (t->tp_new != PyBaseObject_Type.tp_new || t->tp_alloc == NULL)
        return 0;
    PyObject *post = PyObject_GetAttrString(type, "__post_init__");
    if (post != NULL) {
        Py_DECREF(post);
        return 0;
    }
    PyErr_Clear();
    struct layout l = {0};
    for (Py_ssize_t i = 0; i < PyTuple_GET_SIZE(names); i++) {
        PyObject *d = PyDict_GetItemWithError(t->tp_dict, PyTuple_GET_ITEM(names, i));
        if (d == NULL) {
            if (PyErr_Occurred())
                return -1;
            return 0;
        }
        if (!Py_IS_TYPE(d, &PyMemberDescr_Type))
            return 0;
        PyMemberDef *m = ((PyMemberDescrObject *)d)->d_member;
        if (m->type != 16 /* T_OBJECT_EX */ || (m->flags & 1 /* READONLY */)
                || m->offset <= 0 || (size_t)m->offset + sizeof(PyObject *) > (size_t)t->tp_basicsize)
            return 0;
        l.offset[i] = m->offset;
    }
    l.n = PyTuple_GET_SIZE(names);
    *out = l;
    return 0;
}

static PyObject *fp_configure(PyObject *self, PyObject *args)
{
    PyObject *c, *a, *ac, *as, *cc, *cs, *on, *ou, *cn, *an;
    Py_ssize_t em, mo;
    if (!PyArg_ParseTuple(args, "OOO!OO!OO!OnnO!O!", &c, &a, &PyDict_Type, &ac, &as, &PyDict_Type,
                          &cc, &cs, &PyDict_Type, &on, &ou, &em, &mo, &PyTuple_Type, &cn,
                          &PyTuple_Type, &an))
        return NULL;
    if (layout_of(c, cn, &connect_layout) < 0 || layout_of(a, an, &accept_layout) < 0)
        return NULL;
    PyObject *objs[] = {c, a, ac, as, cc, cs, on, ou};
    PyObject **slots[] = {&Connect_t, &Accept_t, &addr_cache, &addr_slow, &comm_cache,
                          &comm_slow, &outcome_names, &outcome_unknown};
    for (size_t i = 0; i < sizeof(objs) / sizeof(objs[0]); i++) {
        Py_INCREF(objs[i]);
        Py_XSETREF(*slots[i], objs[i]);
    }
    early_max = em;
    max_open = mo;
    front_clear();      /* (texts of the caches configured before) */
    used_at(cn, connect_used_str, connect_used_at, CONNECT_USED);
    used_at(an, accept_used_str, accept_used_at, ACCEPT_USED);
    used_at(cn, lat_used_str, lat_used_at, 2);
    used_at(an, wait_used_str, wait_used_at, 2);
    used_at(cn, tc_used_str, tc_used_at, TC_USED);
    used_at(an, ta_used_str, ta_used_at, TA_USED);
    Py_RETURN_NONE;
}

/* A small direct-mapped cache in front of the address and comm caches of
 * tracer/events.py: the text of a raw value is a function of its bytes, so
 * a slot keeps the last text looked up for the raw bytes that hash to it
 * (only a non-empty text, which the dict path would hand back too). It
 * saves the bytes, tuple and int objects a dict lookup needs, 4 addresses
 * and 2 comms a connection. Bounded (FRONT_SLOTS texts held); any bytes
 * another user chooses only make misses, which take the dict path as
 * before. Emptied by configure(). */
#define FRONT_SLOTS 1024
struct front {
    unsigned family;          /* addresses: the record's family; comms: 0 */
    unsigned char raw[16];
    PyObject *text;           /* NULL: empty */
};
static struct front addr_front[FRONT_SLOTS], comm_front[FRONT_SLOTS];

static unsigned front_slot(unsigned family, const unsigned char *raw)
{
    __u64 h = 1469598103934665603ULL ^ family;      /* FNV-1a */
    for (int i = 0; i < 16; i++)
        h = (h ^ raw[i]) * 1099511628211ULL;
    return (unsigned)(h ^ (h >> 32)) & (FRONT_SLOTS - 1);
}

static PyObject *front_get(struct front *f, unsigned family, const unsigned char *raw)
{
    if (f->text != NULL && f->family == family && memcmp(f->raw, raw, 16) == 0) {
        Py_INCREF(f->text);
        return f->text;
    }
    return NULL;
}

static void front_put(struct front *f, unsigned family, const unsigned char *raw, PyObject *text)
{
    if (text == NULL || !PyUnicode_CheckExact(text) || PyUnicode_GET_LENGTH(text) == 0)
        return;
    Py_INCREF(text);
    Py_XSETREF(f->text, text);
    f->family = family;
    memcpy(f->raw, raw, 16);
}

/* front_slot(family, raw) -> the slot raw's text is kept in (tests). */
static PyObject *fp_front_slot(PyObject *self, PyObject *args)
{
    unsigned family;
    Py_buffer raw;
    if (!PyArg_ParseTuple(args, "Iy*", &family, &raw))
        return NULL;
    if (raw.len != 16) {
        PyBuffer_Release(&raw);
        PyErr_SetString(PyExc_ValueError, "front_slot: 16 bytes");
        return NULL;
    }
    unsigned slot = front_slot(family, raw.buf);
    PyBuffer_Release(&raw);
    return PyLong_FromUnsignedLong(slot);
}

static void front_clear(void)
{
    for (int i = 0; i < FRONT_SLOTS; i++) {
        Py_CLEAR(addr_front[i].text);
        Py_CLEAR(comm_front[i].text);
    }
}

/* Text of an address field (family, the field's 16 raw bytes): the front
 * cache's, the cache's, or the slow path's (which fills the cache). New
 * reference. */
static PyObject *addr_text(unsigned family, const __u8 *raw)
{
    struct front *slot = &addr_front[front_slot(family, raw)];
    PyObject *hit = front_get(slot, family, raw);
    if (hit != NULL)
        return hit;
    PyObject *fam = PyLong_FromUnsignedLong(family);
    PyObject *bytes = PyBytes_FromStringAndSize((const char *)raw, 16);
    PyObject *key = (fam && bytes) ? PyTuple_Pack(2, fam, bytes) : NULL;
    PyObject *text = NULL;
    if (key) {
        text = PyDict_GetItemWithError(addr_cache, key);
        if (text && PyObject_IsTrue(text) == 1)
            Py_INCREF(text);
        else if (!PyErr_Occurred())
            text = PyObject_CallFunctionObjArgs(addr_slow, fam, bytes, NULL);
        else
            text = NULL;
    }
    Py_XDECREF(key);
    Py_XDECREF(bytes);
    Py_XDECREF(fam);
    front_put(slot, family, raw, text);
    return text;
}

static PyObject *comm_of(const char *raw)
{
    struct front *slot = &comm_front[front_slot(0, (const unsigned char *)raw)];
    PyObject *hit = front_get(slot, 0, (const unsigned char *)raw);
    if (hit != NULL)
        return hit;
    PyObject *bytes = PyBytes_FromStringAndSize(raw, 16);
    if (bytes == NULL)
        return NULL;
    PyObject *text = PyDict_GetItemWithError(comm_cache, bytes);
    if (text && PyObject_IsTrue(text) == 1)
        Py_INCREF(text);
    else if (!PyErr_Occurred())
        text = PyObject_CallOneArg(comm_slow, bytes);
    else
        text = NULL;
    Py_DECREF(bytes);
    front_put(slot, 0, (const unsigned char *)raw, text);
    return text;
}

static PyObject *outcome_of(unsigned code)
{
    PyObject *k = PyLong_FromUnsignedLong(code);
    if (k == NULL)
        return NULL;
    PyObject *name = PyDict_GetItemWithError(outcome_names, k);
    Py_DECREF(k);
    if (name == NULL) {
        if (PyErr_Occurred())
            return NULL;
        name = outcome_unknown;
    }
    Py_INCREF(name);
    return name;
}

/* An instance of `type` from n new references (stolen, NULLs allowed: then
 * fails): its slots filled where `l` says (layout_of), else the class called. */
static PyObject *make(PyObject *type, const struct layout *l, PyObject **args, size_t n)
{
    PyObject *out = NULL;
    size_t i;
    for (i = 0; i < n; i++)
        if (args[i] == NULL)
            break;
    if (i == n && l->n == (Py_ssize_t)n) {
        PyTypeObject *t = (PyTypeObject *)type;
        out = t->tp_alloc(t, 0);
        if (out != NULL) {
            for (i = 0; i < n; i++)
                *(PyObject **)((char *)out + l->offset[i]) = args[i];   /* stolen */
            return out;
        }
    } else if (i == n) {
        out = PyObject_Vectorcall(type, args, n, NULL);
    }
    for (i = 0; i < n; i++)
        Py_XDECREF(args[i]);
    return out;
}

/* The event, and in *key the key its connection is held under
 * (OpenConnections.connected: (pid, family, daddr, dport)). */
static PyObject *decode_connect(const struct connect_event *r, PyObject **key)
{
    unsigned fam = r->family;
    PyObject *args[16] = {
        PyLong_FromUnsignedLongLong(r->ts_start_ns), PyLong_FromUnsignedLongLong(r->ts_end_ns),
        PyLong_FromUnsignedLong(r->pid), PyLong_FromUnsignedLong(r->tid), comm_of(r->comm),
        PyLong_FromLong(fam == AF_INET ? 4 : 6), addr_text(fam, r->saddr),
        PyLong_FromUnsignedLong(r->sport), addr_text(fam, r->daddr),
        PyLong_FromUnsignedLong(r->dport), outcome_of(r->outcome), PyLong_FromLong(r->err),
        PyLong_FromUnsignedLong(r->syn_retransmits), PyLong_FromUnsignedLongLong(r->sk),
        PyLong_FromUnsignedLong(r->netns), PyLong_FromUnsignedLongLong(r->cgroup_id),
    };
    *key = NULL;
    if (args[2] && args[5] && args[8] && args[9])
        *key = PyTuple_Pack(4, args[2], args[5], args[8], args[9]);
    PyObject *ev = make(Connect_t, &connect_layout, args, 16);
    if (ev == NULL)
        Py_CLEAR(*key);
    return ev;
}

/* The event, and in *key its pid (OpenConnections.accepted). */
static PyObject *decode_accept(const struct accept_event *r, PyObject **key)
{
    unsigned fam = r->family;
    PyObject *args[14] = {
        PyLong_FromUnsignedLongLong(r->ts_ns), PyLong_FromUnsignedLongLong(r->ts_handshake_ns),
        PyLong_FromUnsignedLong(r->pid), PyLong_FromUnsignedLong(r->tid), comm_of(r->comm),
        PyLong_FromLong(fam == AF_INET ? 4 : 6), addr_text(fam, r->laddr),
        PyLong_FromUnsignedLong(r->lport), addr_text(fam, r->raddr),
        PyLong_FromUnsignedLong(r->rport), PyLong_FromUnsignedLong(r->backlog_len),
        PyLong_FromUnsignedLong(r->backlog_max), PyLong_FromUnsignedLong(r->netns),
        PyLong_FromUnsignedLongLong(r->sk),
    };
    *key = args[2];
    Py_XINCREF(*key);
    PyObject *ev = make(Accept_t, &accept_layout, args, 14);
    if (ev == NULL)
        Py_CLEAR(*key);
    return ev;
}

/* The per-walk state: the caller's list, Closes and OpenConnections
 * (borrowed), and their dicts as they are now, fetched once a walk since
 * both objects replace some of them between reads (held: release_state). */
struct walk_state {
    PyObject *pending;          /* list of events */
    PyObject *closes;           /* events.Closes */
    PyObject *open_conns;       /* lifetimes.OpenConnections */
    PyObject *open, *early, *early_prev, *live, *active, *passive, *peaks;
};

/* dict[key] = dict.get(key, 0) + 1; the new count, or -1 on an error. */
static long count_one(PyObject *dict, PyObject *key)
{
    PyObject *old = PyDict_GetItemWithError(dict, key);
    if (old == NULL && PyErr_Occurred())
        return -1;
    long have = old ? PyLong_AsLong(old) : 0;
    if (have == -1 && PyErr_Occurred())
        return -1;
    PyObject *v = PyLong_FromLong(have + 1);
    if (v == NULL)
        return -1;
    int rc = PyDict_SetItem(dict, key, v);
    Py_DECREF(v);
    return rc < 0 ? -1 : have + 1;
}

/* OpenConnections._let_go: one connection of `key` fewer held. */
static int let_go(struct walk_state *w, PyObject *key)
{
    PyObject *old = PyDict_GetItemWithError(w->live, key);
    if (old == NULL && PyErr_Occurred())
        return -1;
    long n = (old ? PyLong_AsLong(old) : 0) - 1;
    if (n == -2 && PyErr_Occurred())
        return -1;
    if (n > 0) {
        PyObject *v = PyLong_FromLong(n);
        int rc = v ? PyDict_SetItem(w->live, key, v) : -1;
        Py_XDECREF(v);
        return rc;
    }
    if (old != NULL)
        return PyDict_DelItem(w->live, key);
    return 0;
}

/* A lifetime into Closes.active[key] (a list made on first use). */
static int add_lifetime(struct walk_state *w, PyObject *key, double us)
{
    PyObject *lifetimes = PyDict_GetItemWithError(w->active, key);
    if (lifetimes != NULL)
        Py_INCREF(lifetimes);
    else if (PyErr_Occurred())
        return -1;
    else {
        lifetimes = PyList_New(0);
        if (lifetimes == NULL || PyDict_SetItem(w->active, key, lifetimes) < 0) {
            Py_XDECREF(lifetimes);
            return -1;
        }
    }
    PyObject *value = PyFloat_FromDouble(us);
    int rc = value ? PyList_Append(lifetimes, value) : -1;
    Py_XDECREF(value);
    Py_DECREF(lifetimes);
    return rc;
}

/* OpenConnections.closed_at. */
static int on_close(struct walk_state *w, const struct close_event *r)
{
    PyObject *sk = PyLong_FromUnsignedLongLong(r->sk);
    if (sk == NULL)
        return -1;
    int rc = -1;
    PyObject *opened = PyDict_GetItemWithError(w->open, sk);
    if (opened != NULL) {
        Py_INCREF(opened);
        if (PyDict_DelItem(w->open, sk) < 0 || !PyTuple_Check(opened) || PyTuple_GET_SIZE(opened) != 2) {
            if (!PyErr_Occurred())
                PyErr_SetString(PyExc_TypeError, "open connection entry is not (key, ts)");
            Py_DECREF(opened);
            goto out;
        }
        PyObject *key = PyTuple_GET_ITEM(opened, 0);
        if (Py_IS_TYPE(key, &PyTuple_Type)) {
            unsigned long long ts_open = PyLong_AsUnsignedLongLong(PyTuple_GET_ITEM(opened, 1));
            if (!(ts_open == (unsigned long long)-1 && PyErr_Occurred()) && let_go(w, key) == 0)
                rc = add_lifetime(w, key, r->ts_ns > ts_open
                                  ? (double)(r->ts_ns - ts_open) / 1000.0 : 0.0);
        } else {
            rc = count_one(w->passive, key) < 0 ? -1 : 0;
        }
        Py_DECREF(opened);
    } else if (PyErr_Occurred()) {
        goto out;
    } else if (PyDict_GET_SIZE(w->early) < early_max) {
        PyObject *ts = PyLong_FromUnsignedLongLong(r->ts_ns);
        rc = ts ? PyDict_SetItem(w->early, sk, ts) : -1;
        Py_XDECREF(ts);
    } else {
        rc = 0;
    }
out:
    Py_DECREF(sk);
    return rc;
}

/* Pop `sk` from an early-close dict: 1 found (*ts set), 0 not, -1 error. */
static int pop_early(PyObject *dict, PyObject *sk, unsigned long long *ts)
{
    if (PyDict_GET_SIZE(dict) == 0)
        return 0;
    PyObject *v = PyDict_GetItemWithError(dict, sk);
    if (v == NULL)
        return PyErr_Occurred() ? -1 : 0;
    *ts = PyLong_AsUnsignedLongLong(v);
    if (*ts == (unsigned long long)-1 && PyErr_Occurred())
        return -1;
    return PyDict_DelItem(dict, sk) < 0 ? -1 : 1;
}

/* OpenConnections._opened(sk, key, ts_open, closes). */
static int on_open(struct walk_state *w, unsigned long long sk_v, PyObject *key,
                   unsigned long long ts_open)
{
    int rc = -1;
    PyObject *sk = PyLong_FromUnsignedLongLong(sk_v), *ts = NULL, *entry = NULL;
    if (sk == NULL)
        return -1;
    int is_tuple = Py_IS_TYPE(key, &PyTuple_Type);
    if (PyDict_GET_SIZE(w->open) >= max_open) {
        /* the table is full: its eviction of the oldest is Python's */
        ts = PyLong_FromUnsignedLongLong(ts_open);
        PyObject *res = ts ? PyObject_CallMethodObjArgs(w->open_conns, str_opened, sk, key, ts,
                                                         w->closes, NULL) : NULL;
        rc = res ? 0 : -1;
        Py_XDECREF(res);
        goto out;
    }
    /* a close that came before its open (read earlier): counted closed now */
    unsigned long long ts_close = 0;
    int found = pop_early(w->early, sk, &ts_close);
    if (found == 0)
        found = pop_early(w->early_prev, sk, &ts_close);
    if (found < 0)
        goto out;
    if (found && ts_close >= ts_open) {
        rc = is_tuple ? add_lifetime(w, key, (double)(ts_close - ts_open) / 1000.0)
                      : (count_one(w->passive, key) < 0 ? -1 : 0);
        goto out;
    }
    PyObject *replaced = PyDict_GetItemWithError(w->open, sk);
    if (replaced != NULL) {      /* its close was never seen */
        if (!PyTuple_Check(replaced) || PyTuple_GET_SIZE(replaced) != 2) {
            PyErr_SetString(PyExc_TypeError, "open connection entry is not (key, ts)");
            goto out;
        }
        /* (its key stays alive in the entry, which is replaced only below) */
        PyObject *old_key = PyTuple_GET_ITEM(replaced, 0);
        if (Py_IS_TYPE(old_key, &PyTuple_Type) && let_go(w, old_key) < 0)
            goto out;
    } else if (PyErr_Occurred()) {
        goto out;
    }
    ts = PyLong_FromUnsignedLongLong(ts_open);
    entry = ts ? PyTuple_Pack(2, key, ts) : NULL;
    if (entry == NULL || PyDict_SetItem(w->open, sk, entry) < 0)
        goto out;
    if (is_tuple) {     /* held at once: a new peak? (Closes.peaks) */
        long live = count_one(w->live, key);
        if (live < 0)
            goto out;
        PyObject *peak = PyDict_GetItemWithError(w->peaks, key);
        if (peak == NULL && PyErr_Occurred())
            goto out;
        long p = peak ? PyLong_AsLong(peak) : 0;
        if (p == -1 && PyErr_Occurred())
            goto out;
        if (live > p && PyDict_SetItem(w->peaks, key, PyDict_GetItem(w->live, key)) < 0)
            goto out;
    }
    rc = 0;
out:
    Py_XDECREF(entry);
    Py_XDECREF(ts);
    Py_DECREF(sk);
    return rc;
}

/* One record: 1 handled, 0 a decode error, -1 a Python error. */
static int on_record(struct walk_state *w, const char *p, __u32 size)
{
    __u32 kind = 0;
    if (size >= sizeof(kind))
        memcpy(&kind, p, sizeof(kind));
    if (kind == EV_CLOSE && size >= sizeof(struct close_event))
        return on_close(w, (const struct close_event *)p) < 0 ? -1 : 1;
    PyObject *ev, *key = NULL;
    unsigned long long sk = 0, ts_open = 0;
    int opens = 0;
    if (kind == EV_CONNECT && size >= sizeof(struct connect_event)) {
        const struct connect_event *r = (const struct connect_event *)p;
        ev = decode_connect(r, &key);
        /* held from the connect() call (OpenConnections.connected) */
        opens = r->outcome == OUTCOME_ESTABLISHED;
        sk = r->sk;
        ts_open = r->ts_start_ns;
    } else if (kind == EV_ACCEPT && size >= sizeof(struct accept_event)) {
        const struct accept_event *r = (const struct accept_event *)p;
        ev = decode_accept(r, &key);
        opens = 1;
        sk = r->sk;
        ts_open = r->ts_handshake_ns ? r->ts_handshake_ns : r->ts_ns;
    } else {
        return 0;
    }
    if (ev == NULL)
        return -1;
    int rc = PyList_Append(w->pending, ev);
    if (rc == 0 && opens)
        rc = on_open(w, sk, key, ts_open);
    Py_DECREF(ev);
    Py_XDECREF(key);
    return rc < 0 ? -1 : 1;
}

static int bind_state(struct walk_state *w)
{
    w->open = w->early = w->early_prev = w->live = w->active = w->passive = w->peaks = NULL;
    PyObject **dst[] = {&w->open, &w->early, &w->early_prev, &w->live, &w->active, &w->passive,
                        &w->peaks};
    PyObject *owner[] = {w->open_conns, w->open_conns, w->open_conns, w->open_conns, w->closes,
                         w->closes, w->closes};
    PyObject *name[] = {str_open, str_early, str_early_prev, str_live, str_active, str_passive,
                        str_peaks};
    for (int i = 0; i < 7; i++) {
        PyObject *d = PyObject_GetAttr(owner[i], name[i]);
        if (d == NULL)
            return -1;
        if (!PyDict_CheckExact(d)) {
            PyErr_Format(PyExc_TypeError, "%U is not a dict", name[i]);
            Py_DECREF(d);
            return -1;
        }
        *dst[i] = d;    /* released by release_state */
    }
    return 0;
}

static void release_state(struct walk_state *w)
{
    Py_CLEAR(w->open);
    Py_CLEAR(w->early);
    Py_CLEAR(w->early_prev);
    Py_CLEAR(w->live);
    Py_CLEAR(w->active);
    Py_CLEAR(w->passive);
    Py_CLEAR(w->peaks);
}

static __u64 load_u64(PyObject *producer, int *err)
{
    PyObject *v = PyObject_CallNoArgs(producer);
    if (v == NULL) {
        *err = 1;
        return 0;
    }
    unsigned long long x = PyLong_AsUnsignedLongLong(v);
    Py_DECREF(v);
    if (x == (unsigned long long)-1 && PyErr_Occurred())
        *err = 1;
    return x;
}

/* walk_ring(data, mask, cons, producer, limit, pending, closes, open)
 *   -> (new consumer position, records handed over, decode errors)
 * As tracer.probes.buffers.read_ring with ProbeSession._on_record. */
static PyObject *fp_walk_ring(PyObject *self, PyObject *args)
{
    Py_buffer buf;
    unsigned long long mask, cons;
    PyObject *producer;
    Py_ssize_t limit;
    struct walk_state w;
    if (!configured())
        return NULL;
    if (!PyArg_ParseTuple(args, "y*KKOnO!OO", &buf, &mask, &cons, &producer, &limit,
                          &PyList_Type, &w.pending, &w.closes, &w.open_conns))
        return NULL;
    PyObject *result = NULL;
    Py_ssize_t n = 0, errors = 0;
    int err = 0;
    if (bind_state(&w) < 0)
        goto done;
    __u64 prod = load_u64(producer, &err);
    const char *data = buf.buf;
    __u64 len = (__u64)buf.len;
    while (!err && cons < prod && n < limit) {
        __u64 off = cons & mask;
        if (off + BPF_RINGBUF_HDR_SZ > len) {
            PyErr_SetString(PyExc_ValueError, "ring record header outside the buffer");
            err = 1;
            break;
        }
        /* the kernel clears the busy bit when the record is committed (release) */
        __u32 hdr = __atomic_load_n((const __u32 *)(data + off), __ATOMIC_ACQUIRE);
        if (hdr & BPF_RINGBUF_BUSY_BIT)
            break;
        __u32 size = hdr & ~(BPF_RINGBUF_BUSY_BIT | BPF_RINGBUF_DISCARD_BIT);
        if (!(hdr & BPF_RINGBUF_DISCARD_BIT)) {
            if (off + BPF_RINGBUF_HDR_SZ + size > len) {
                PyErr_SetString(PyExc_ValueError, "ring record runs past the buffer");
                err = 1;
                break;
            }
            int rc = on_record(&w, data + off + BPF_RINGBUF_HDR_SZ, size);
            if (rc < 0) {
                err = 1;
                break;
            }
            errors += rc == 0;
            n++;
        }
        cons += (size + BPF_RINGBUF_HDR_SZ + 7) & ~7ULL;
        if (cons >= prod)
            prod = load_u64(producer, &err);
    }
    if (!err)
        result = Py_BuildValue("Knn", cons, n, errors);
done:
    release_state(&w);
    PyBuffer_Release(&buf);
    return result;
}

static PyObject *fp_sizes(PyObject *self, PyObject *unused)
{
    return Py_BuildValue("{s:n,s:n,s:n}", "connect_event", (Py_ssize_t)sizeof(struct connect_event),
                         "accept_event", (Py_ssize_t)sizeof(struct accept_event),
                         "close_event", (Py_ssize_t)sizeof(struct close_event));
}

/* ---------------------------------------------------------- fd tables */

#define SOCKET_PREFIX "socket:["

/* The inode of a link target "socket:[INODE]"; 0 for any other target. */
static unsigned long long socket_inode(const char *target, ssize_t len)
{
    const ssize_t plen = sizeof(SOCKET_PREFIX) - 1;
    if (len <= plen + 1 || memcmp(target, SOCKET_PREFIX, plen) != 0 || target[len - 1] != ']')
        return 0;
    unsigned long long ino = 0;
    for (ssize_t i = plen; i < len - 1; i++) {
        if (target[i] < '0' || target[i] > '9' || ino > (~0ULL - 9) / 10)
            return 0;
        ino = ino * 10 + (unsigned)(target[i] - '0');
    }
    return ino;
}

struct inodes { unsigned long long *v; size_t n, cap; };

static int inodes_add(struct inodes *a, unsigned long long ino)
{
    if (a->n == a->cap) {
        size_t cap = a->cap ? 2 * a->cap : 256;
        unsigned long long *v = realloc(a->v, cap * sizeof(*v));
        if (!v)
            return -1;
        a->v = v;
        a->cap = cap;
    }
    a->v[a->n++] = ino;
    return 0;
}

/* fd_sockets(pid) -> (number of fds, {socket inode}) or None if pid is gone
 * or its fd table unreadable: _scan_fd_dir's answer. One listing of
 * /proc/PID/fd and a readlink of each entry relative to it, without the GIL
 * (the Parquet flusher runs meanwhile). An fd closed between the listing and
 * its readlink still counts and holds no socket, as in Python. */
static PyObject *fp_fd_sockets(PyObject *self, PyObject *args)
{
    int pid;
    if (!PyArg_ParseTuple(args, "i", &pid))
        return NULL;
    char path[48];
    snprintf(path, sizeof(path), "/proc/%d/fd", pid);
    struct inodes found = {0};
    Py_ssize_t count = 0;
    int failed = 0, oom = 0;
    Py_BEGIN_ALLOW_THREADS
    int dfd = open(path, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    DIR *dir = dfd >= 0 ? fdopendir(dfd) : NULL;
    if (!dir) {
        if (dfd >= 0)
            close(dfd);
        failed = 1;
    } else {
        struct dirent *e;
        char target[64];
        for (;;) {
            errno = 0;
            if ((e = readdir(dir)) == NULL) {
                failed = errno != 0;      /* os.listdir raises: None */
                break;
            }
            if (e->d_name[0] == '.' && (!e->d_name[1] || (e->d_name[1] == '.' && !e->d_name[2])))
                continue;
            count++;
            ssize_t len = readlinkat(dfd, e->d_name, target, sizeof(target));
            unsigned long long ino = len > 0 ? socket_inode(target, len) : 0;
            if (ino && inodes_add(&found, ino) < 0) {
                oom = 1;
                break;
            }
        }
        closedir(dir);
    }
    Py_END_ALLOW_THREADS
    PyObject *result = NULL;
    if (oom) {
        PyErr_NoMemory();
    } else if (failed) {
        Py_INCREF(Py_None);     /* (Py_NewRef is 3.10+) */
        result = Py_None;
    } else {
        PyObject *set = PySet_New(NULL);
        for (size_t i = 0; set && i < found.n; i++) {
            PyObject *ino = PyLong_FromUnsignedLongLong(found.v[i]);
            if (!ino || PySet_Add(set, ino) < 0)
                Py_CLEAR(set);
            Py_XDECREF(ino);
        }
        if (set)
            result = Py_BuildValue("(nN)", count, set);
    }
    free(found.v);
    return result;
}

/* ------------------------------------------------------ sock_diag replies */

#ifndef TCPDIAG_GETSOCK
#define TCPDIAG_GETSOCK 18     /* linux/inet_diag.h; the old request's replies */
#endif

static PyObject *u32_or_none(const __u32 *v, size_t n, size_t i)
{
    if (i < n)
        return PyLong_FromUnsignedLong(v[i]);
    Py_INCREF(Py_None);
    return Py_None;
}

static PyObject *addr_text_of(int af, const __be32 *raw)
{
    char text[INET6_ADDRSTRLEN];
    if (!inet_ntop(af, raw, text, sizeof(text)))
        return PyErr_SetFromErrno(PyExc_OSError);
    return PyUnicode_FromString(text);
}

/* One TcpSocket from the message body of len bytes (at least an
 * inet_diag_msg), or NULL with no error set when it is not a well-formed
 * socket (Python then says why). */
static PyObject *diag_socket(PyObject *cls, const unsigned char *body, size_t len)
{
    struct inet_diag_msg m;
    memcpy(&m, body, sizeof(m));
    if (m.idiag_family != AF_INET && m.idiag_family != AF_INET6)
        return NULL;
    __u32 mem[SK_MEMINFO_VARS] = {0};
    size_t nmem = 0;                /* slots of the last SKMEMINFO; 0: none */
    int shutdown = -1;
    size_t attr = sizeof(m);
    while (attr + sizeof(struct nlattr) <= len) {
        struct nlattr a;
        memcpy(&a, body + attr, sizeof(a));
        if (a.nla_len < sizeof(a) || a.nla_len > len - attr)
            return NULL;
        int type = a.nla_type & NLA_TYPE_MASK;
        size_t plen = a.nla_len - sizeof(a);
        if (type == INET_DIAG_SKMEMINFO) {
            /* (the last one wins, as in Python; only the slots read are kept) */
            nmem = plen / 4;
            memset(mem, 0, sizeof(mem));
            memcpy(mem, body + attr + sizeof(a),
                   (nmem < SK_MEMINFO_VARS ? nmem : SK_MEMINFO_VARS) * 4);
        } else if (type == INET_DIAG_SHUTDOWN && plen > 0) {
            shutdown = body[attr + sizeof(a)];
        }
        attr += (a.nla_len + 3) & ~3u;
    }
    int af = m.idiag_family;
    PyObject *items[15] = {
        PyLong_FromLong(af == AF_INET ? 4 : 6),
        PyLong_FromLong(m.idiag_state),
        addr_text_of(af, m.id.idiag_src),
        PyLong_FromLong(ntohs(m.id.idiag_sport)),
        addr_text_of(af, m.id.idiag_dst),
        PyLong_FromLong(ntohs(m.id.idiag_dport)),
        PyLong_FromUnsignedLong(m.idiag_inode),
        PyLong_FromUnsignedLong(m.idiag_uid),
        PyLong_FromUnsignedLongLong((unsigned long long)m.id.idiag_cookie[0]
                                    | ((unsigned long long)m.id.idiag_cookie[1] << 32)),
        PyLong_FromUnsignedLong(m.idiag_rqueue),
        PyLong_FromUnsignedLong(m.idiag_wqueue),
        u32_or_none(mem, nmem, SK_MEMINFO_DROPS),
        u32_or_none(mem, nmem, SK_MEMINFO_RMEM_ALLOC),
        u32_or_none(mem, nmem, SK_MEMINFO_WMEM_QUEUED),
        shutdown >= 0 ? PyLong_FromLong(shutdown) : (Py_INCREF(Py_None), Py_None),
    };
    PyObject *values = PyTuple_New(15), *args = NULL, *out = NULL;
    int complete = values != NULL;
    for (int i = 0; i < 15; i++) {
        complete &= items[i] != NULL;
        if (values)
            PyTuple_SET_ITEM(values, i, items[i]);   /* (a NULL is released as none) */
        else
            Py_XDECREF(items[i]);
    }
    if (complete && (args = PyTuple_Pack(1, values)) != NULL)
        out = PyTuple_Type.tp_new((PyTypeObject *)cls, args, NULL);   /* tuple.__new__(cls, values) */
    Py_XDECREF(args);
    Py_XDECREF(values);
    return out;                     /* NULL: the failed allocation's error is set */
}

/* diag_messages(data, seq, out, TcpSocket) -> offset: the messages of one
 * netlink datagram, from its start, appended to out as TcpSocket while they
 * are sockets (or another request's, skipped); the offset of the first one
 * that is not (the end of the dump, an error, anything malformed), where
 * tracer/probes/sock_diag.py parse_datagram goes on. */
static PyObject *fp_diag_messages(PyObject *self, PyObject *args)
{
    Py_buffer buf;
    unsigned int seq;
    PyObject *out, *cls;
    if (!PyArg_ParseTuple(args, "y*IO!O", &buf, &seq, &PyList_Type, &out, &cls))
        return NULL;
    if (!PyType_Check(cls) || !PyType_IsSubtype((PyTypeObject *)cls, &PyTuple_Type)) {
        PyBuffer_Release(&buf);
        PyErr_SetString(PyExc_TypeError, "diag_messages: the socket class must be a tuple type");
        return NULL;
    }
    const unsigned char *data = buf.buf;
    size_t end = (size_t)buf.len, off = 0;
    int err = 0;
    while (off + sizeof(struct nlmsghdr) <= end) {
        struct nlmsghdr h;
        memcpy(&h, data + off, sizeof(h));
        if (h.nlmsg_len < sizeof(h) || h.nlmsg_len > end - off)
            break;
        size_t next = off + ((h.nlmsg_len + 3) & ~3u);
        if (h.nlmsg_seq != seq) {      /* a late answer to an earlier request */
            off = next;
            continue;
        }
        if ((h.nlmsg_flags & NLM_F_DUMP_INTR)
            || (h.nlmsg_type != SOCK_DIAG_BY_FAMILY && h.nlmsg_type != TCPDIAG_GETSOCK)
            || h.nlmsg_len < sizeof(h) + sizeof(struct inet_diag_msg))
            break;
        PyObject *sock = diag_socket(cls, data + off + sizeof(h), h.nlmsg_len - sizeof(h));
        if (sock == NULL) {
            err = PyErr_Occurred() != NULL;
            break;
        }
        int failed = PyList_Append(out, sock) < 0;
        Py_DECREF(sock);
        if (failed) {
            err = 1;
            break;
        }
        off = next;
    }
    PyBuffer_Release(&buf);
    return err ? NULL : PyLong_FromSize_t(off);
}

static PyObject *fp_slots_filled(PyObject *self, PyObject *unused)
{
    return Py_BuildValue("(OO)", connect_layout.n ? Py_True : Py_False,
                         accept_layout.n ? Py_True : Py_False);
}

/* ------------------------------------------------------------ rows to Arrow */

/* One column of `rows` (a list of tuples) as Arrow buffers, or None when
 * any value is one this code does not convert exactly as pa.array(values,
 * type) does (then the caller does that): of another Python type than the
 * column's, out of its range, or a str without a UTF-8 form.
 * kind: 'b' int8, 'i' int32, 'q' int64 (and timestamp[us]: ints only),
 * 'd' double (a float, or an int a double holds exactly), 's' string.
 * Result: (null_count, validity or None, data, offsets or None), the data
 * of a string column its characters. */
static PyObject *arrow_column(PyObject *rows, Py_ssize_t n, Py_ssize_t col, int kind)
{
    size_t width = kind == 'b' ? 1 : kind == 'i' ? 4 : kind == 's' ? 0 : 8;
    PyObject *valid = NULL, *data = NULL, *offsets = NULL, *out = NULL;
    const char **text = NULL;
    Py_ssize_t *lens = NULL;
    Py_ssize_t nulls = 0, i;
    size_t chars = 0;
    int fallback = 0;

    valid = PyBytes_FromStringAndSize(NULL, (n + 7) / 8);
    if (valid == NULL)
        goto done;
    unsigned char *bits = (unsigned char *)PyBytes_AS_STRING(valid);
    memset(bits, 0, (size_t)(n + 7) / 8);
    if (kind == 's') {
        offsets = PyBytes_FromStringAndSize(NULL, (n + 1) * 4);
        text = PyMem_Malloc(sizeof(*text) * (size_t)(n ? n : 1));
        lens = PyMem_Malloc(sizeof(*lens) * (size_t)(n ? n : 1));
        if (offsets == NULL || text == NULL || lens == NULL) {
            if (!PyErr_Occurred())
                PyErr_NoMemory();
            goto done;
        }
    } else {
        data = PyBytes_FromStringAndSize(NULL, n * (Py_ssize_t)width);
        if (data == NULL)
            goto done;
        memset(PyBytes_AS_STRING(data), 0, (size_t)n * width);
    }
    char *dst = data ? PyBytes_AS_STRING(data) : NULL;

    for (i = 0; i < n && !fallback; i++) {
        PyObject *row = PyList_GET_ITEM(rows, i);
        if (!PyTuple_CheckExact(row) || PyTuple_GET_SIZE(row) <= col) {
            fallback = 1;
            break;
        }
        PyObject *v = PyTuple_GET_ITEM(row, col);
        if (v == Py_None) {
            nulls++;
            if (kind == 's') {
                text[i] = NULL;
                lens[i] = 0;
            }
            continue;
        }
        bits[i >> 3] |= (unsigned char)(1u << (i & 7));
        if (kind == 's') {
            if (!PyUnicode_CheckExact(v)) {
                fallback = 1;
                break;
            }
            text[i] = PyUnicode_AsUTF8AndSize(v, &lens[i]);
            if (text[i] == NULL) {    /* lone surrogates: pa.array's own error */
                PyErr_Clear();
                fallback = 1;
                break;
            }
            chars += (size_t)lens[i];
            if (chars > INT32_MAX)    /* past a string array's offsets */
                fallback = 1;
        } else if (kind == 'd') {
            double x;
            if (PyFloat_CheckExact(v)) {
                x = PyFloat_AS_DOUBLE(v);
            } else if (PyLong_CheckExact(v)) {
                int over = 0;
                long long w = PyLong_AsLongLongAndOverflow(v, &over);
                /* pa.array takes an int for a double only where it is exact */
                if (over || w > (1LL << 53) || w < -(1LL << 53)) {
                    PyErr_Clear();
                    fallback = 1;
                    break;
                }
                x = (double)w;
            } else {
                fallback = 1;
                break;
            }
            memcpy(dst + (size_t)i * 8, &x, 8);
        } else {
            int over = 0;
            long long w;
            if (!PyLong_CheckExact(v)) {
                fallback = 1;
                break;
            }
            w = PyLong_AsLongLongAndOverflow(v, &over);
            if (over || (w == -1 && PyErr_Occurred())) {
                PyErr_Clear();
                fallback = 1;
                break;
            }
            if (kind == 'b') {
                if (w < INT8_MIN || w > INT8_MAX) {
                    fallback = 1;
                    break;
                }
                int8_t x = (int8_t)w;
                memcpy(dst + i, &x, 1);
            } else if (kind == 'i') {
                if (w < INT32_MIN || w > INT32_MAX) {
                    fallback = 1;
                    break;
                }
                int32_t x = (int32_t)w;
                memcpy(dst + (size_t)i * 4, &x, 4);
            } else {
                int64_t x = (int64_t)w;
                memcpy(dst + (size_t)i * 8, &x, 8);
            }
        }
    }
    if (fallback) {
        out = Py_None;
        Py_INCREF(out);
        goto done;
    }
    if (kind == 's') {
        data = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)chars);
        if (data == NULL)
            goto done;
        char *c = PyBytes_AS_STRING(data);
        char *o = PyBytes_AS_STRING(offsets);
        int32_t at = 0;
        for (i = 0; i < n; i++) {
            memcpy(o + (size_t)i * 4, &at, 4);
            if (lens[i]) {
                memcpy(c + at, text[i], (size_t)lens[i]);
                at += (int32_t)lens[i];
            }
        }
        memcpy(o + (size_t)n * 4, &at, 4);
    }
    out = Py_BuildValue("nOOO", nulls, nulls ? valid : Py_None, data,
                        offsets ? offsets : Py_None);
done:
    PyMem_Free(text);
    PyMem_Free(lens);
    Py_XDECREF(valid);
    Py_XDECREF(data);
    Py_XDECREF(offsets);
    return out;
}

/* arrow_columns(rows, kinds) -> [arrow_column of each column]: `kinds` one
 * letter a column (as arrow_column). */
static PyObject *fp_arrow_columns(PyObject *self, PyObject *args)
{
    PyObject *rows;
    const char *kinds;
    Py_ssize_t nkinds;
    if (!PyArg_ParseTuple(args, "O!s#", &PyList_Type, &rows, &kinds, &nkinds))
        return NULL;
    for (Py_ssize_t k = 0; k < nkinds; k++)
        if (!strchr("biqds", kinds[k]) || kinds[k] == '\0') {
            PyErr_Format(PyExc_ValueError, "arrow_columns: unknown column kind %c", kinds[k]);
            return NULL;
        }
    Py_ssize_t n = PyList_GET_SIZE(rows);
    PyObject *out = PyList_New(nkinds);
    if (out == NULL)
        return NULL;
    for (Py_ssize_t k = 0; k < nkinds; k++) {
        PyObject *c = arrow_column(rows, n, k, kinds[k]);
        if (c == NULL) {
            Py_DECREF(out);
            return NULL;
        }
        PyList_SET_ITEM(out, k, c);
    }
    return out;
}

/* ------------------------------------------------------------ event rows */

/* Clock.wall_us: (mono_ns + offset_ns) // 1000, exactly (Python's
 * arithmetic where C's long long would not hold it). New reference. */
static PyObject *wall_us(PyObject *mono, long long offset, PyObject *offset_obj)
{
    if (PyLong_CheckExact(mono)) {
        int overflow = 0;
        long long m = PyLong_AsLongLongAndOverflow(mono, &overflow), sum;
        if (!overflow && !(m == -1 && PyErr_Occurred()) && !__builtin_add_overflow(m, offset, &sum)) {
            long long q = sum / 1000;
            if (sum % 1000 != 0 && sum < 0)
                q -= 1;                         /* floor, as // */
            return PyLong_FromLongLong(q);
        }
        PyErr_Clear();
    }
    PyObject *sum = PyNumber_Add(mono, offset_obj);
    if (sum == NULL)
        return NULL;
    PyObject *thousand = PyLong_FromLong(1000), *out = NULL;
    if (thousand != NULL)
        out = PyNumber_FloorDivide(sum, thousand);
    Py_XDECREF(thousand);
    Py_DECREF(sum);
    return out;
}

/* x or None. New reference. */
static PyObject *or_none(PyObject *x)
{
    int t = PyObject_IsTrue(x);
    if (t < 0)
        return NULL;
    PyObject *out = t ? x : Py_None;
    Py_INCREF(out);
    return out;
}

/* The fields `used` of ev, into f (new references); -1 on an error. */
static int fields_of(PyObject *ev, const struct layout *l, PyObject **used,
                     const Py_ssize_t *at, int n, PyObject **f)
{
    for (int k = 0; k < n; k++) {
        PyObject *v = NULL;
        if (l->n && at[k] >= 0)
            v = *(PyObject **)((char *)ev + l->offset[at[k]]);
        if (v != NULL)
            Py_INCREF(v);
        else if ((v = PyObject_GetAttr(ev, used[k])) == NULL)
            return -1;
        f[k] = v;
    }
    return 0;
}

/* A row: the n values (new references, stolen) and the container columns
 * `where` (any iterable, as *where takes it). */
static PyObject *row_of(PyObject **v, Py_ssize_t n, PyObject *where)
{
    PyObject *w = PySequence_Tuple(where), *row = NULL;
    if (w != NULL && (row = PyTuple_New(n + PyTuple_GET_SIZE(w))) != NULL) {
        for (Py_ssize_t i = 0; i < n; i++) {
            PyTuple_SET_ITEM(row, i, v[i]);     /* stolen */
            v[i] = NULL;
        }
        for (Py_ssize_t j = 0; j < PyTuple_GET_SIZE(w); j++) {
            PyObject *x = PyTuple_GET_ITEM(w, j);
            Py_INCREF(x);
            PyTuple_SET_ITEM(row, n + j, x);
        }
    }
    Py_XDECREF(w);
    return row;
}

static PyObject *ref(PyObject *x)
{
    Py_INCREF(x);
    return x;
}

/* What a row was made of, let go (a row's own values were taken from v). */
static void release_parts(PyObject **f, int nf, PyObject **v, Py_ssize_t n, PyObject *where)
{
    for (int k = 0; k < nf; k++)
        Py_XDECREF(f[k]);
    for (Py_ssize_t k = 0; k < n; k++)
        Py_XDECREF(v[k]);
    Py_XDECREF(where);
}

/* Each value in the order the Python expression evaluates it; the first
 * error ends the row (nothing further is called with an error set). */
#define PUT(x) do { if ((v[n++] = (x)) == NULL) goto done; } while (0)

/* a and b as C values when both are exact ints in [0, 2**63); else 0. */
static int both_small(PyObject *a, PyObject *b, long long *x, long long *y)
{
    if (!PyLong_CheckExact(a) || !PyLong_CheckExact(b))
        return 0;
    int oa = 0, ob = 0;
    *x = PyLong_AsLongLongAndOverflow(a, &oa);
    *y = PyLong_AsLongLongAndOverflow(b, &ob);
    return !oa && !ob && *x >= 0 && *y >= 0;
}

/* The microseconds from time a to time b of an event of a configured
 * class, as its property works them out (tracer/events.py, the definition:
 * Connect.latency_us from ts_start_ns to ts_end_ns, Accept.queue_wait_us
 * from ts_handshake_ns to ts_ns): None when b is before a (or a is 0 and
 * zero_a_unknown), else the exact difference converted to the nearest
 * double and divided by 1000.0. Done here when both are ints of up to 63
 * bits; anything else is the property's own answer. */
static PyObject *micros_between(PyObject *ev, const struct layout *l, PyObject **used,
                                const Py_ssize_t *at, PyObject *property, int zero_a_unknown)
{
    PyObject *f[2] = {NULL}, *out;
    long long a, b;
    if (fields_of(ev, l, used, at, 2, f) < 0) {
        Py_XDECREF(f[0]);
        return NULL;
    }
    if (both_small(f[0], f[1], &a, &b))
        out = (b < a || (zero_a_unknown && a == 0)) ? ref(Py_None)
            : PyFloat_FromDouble((double)(b - a) / 1000.0);
    else
        out = PyObject_GetAttr(ev, property);
    Py_DECREF(f[0]);
    Py_DECREF(f[1]);
    return out;
}

static PyObject *latency_of(PyObject *ev)
{
    return micros_between(ev, &connect_layout, lat_used_str, lat_used_at, str_latency_us, 0);
}

static PyObject *queue_wait_of(PyObject *ev)
{
    return micros_between(ev, &accept_layout, wait_used_str, wait_used_at, str_queue_wait_us, 1);
}

/* tracer/sinks/recorder.py connect_values(ev, clock, container(pid, cgroup_id)). */
static PyObject *connect_row(PyObject *ev, long long offset, PyObject *offset_obj,
                             PyObject *container, PyObject *established)
{
    PyObject *f[CONNECT_USED] = {NULL}, *v[14] = {NULL}, *row = NULL, *where = NULL;
    Py_ssize_t n = 0;
    if (fields_of(ev, &connect_layout, connect_used_str, connect_used_at, CONNECT_USED, f) < 0)
        goto done;
    /* f: ts_start_ns 0, pid 1, tid 2, comm 3, family 4, saddr 5, sport 6, daddr 7,
     * dport 8, outcome 9, err 10, syn_retransmits 11, netns 12, cgroup_id 13 */
    PyObject *args[2] = {f[1], f[13]};
    if ((where = PyObject_Vectorcall(container, args, 2, NULL)) == NULL)
        goto done;
    PUT(wall_us(f[0], offset, offset_obj));
    for (int k = 1; k <= 8; k++)            /* pid .. dport */
        PUT(ref(f[k]));
    PUT(latency_of(ev));
    PUT(ref(f[9]));
    PUT(ref(f[11]));
    int est = PyObject_RichCompareBool(f[9], established, Py_EQ);
    if (est < 0)
        goto done;
    PUT(ref(est ? Py_None : f[10]));
    PUT(or_none(f[12]));
    row = row_of(v, n, where);
done:
    release_parts(f, CONNECT_USED, v, n, where);
    return row;
}

/* accept_values(ev, clock, container(pid, 0)). */
static PyObject *accept_row(PyObject *ev, long long offset, PyObject *offset_obj,
                            PyObject *container, PyObject *zero)
{
    PyObject *f[ACCEPT_USED] = {NULL}, *v[13] = {NULL}, *row = NULL, *where = NULL;
    Py_ssize_t n = 0;
    if (fields_of(ev, &accept_layout, accept_used_str, accept_used_at, ACCEPT_USED, f) < 0)
        goto done;
    /* f: ts_ns 0, pid 1, comm 2, family 3, laddr 4, lport 5, raddr 6, rport 7,
     * backlog_len 8, backlog_max 9, netns 10 */
    PyObject *args[2] = {f[1], zero};
    if ((where = PyObject_Vectorcall(container, args, 2, NULL)) == NULL)
        goto done;
    PUT(wall_us(f[0], offset, offset_obj));
    for (int k = 1; k <= 7; k++)            /* pid .. rport */
        PUT(ref(f[k]));
    PUT(queue_wait_of(ev));
    PUT(ref(f[8]));
    PUT(ref(f[9]));
    PUT(ref(Py_None));
    PUT(or_none(f[10]));
    row = row_of(v, n, where);
done:
    release_parts(f, ACCEPT_USED, v, n, where);
    return row;
}
#undef PUT

/* event_rows(events, offset_ns, container, connects, accepts, established):
 * RecordSink.on_events' loop (tracer/sinks/recorder.py), which stays the
 * definition: each Connect's connect_values row appended to `connects`,
 * each Accept's accept_values row to `accepts`, anything else passed over;
 * offset_ns is the Clock's (wall_us), container the sink's. */
static PyObject *fp_event_rows(PyObject *self, PyObject *args)
{
    PyObject *evs, *offset_obj, *container, *connects, *accepts, *established;
    if (!PyArg_ParseTuple(args, "O!O!OO!O!O", &PyList_Type, &evs, &PyLong_Type, &offset_obj,
                          &container, &PyList_Type, &connects, &PyList_Type, &accepts,
                          &established))
        return NULL;
    if (!configured())
        return NULL;
    int overflow = 0;
    long long offset = PyLong_AsLongLongAndOverflow(offset_obj, &overflow);
    if (overflow || (offset == -1 && PyErr_Occurred())) {
        PyErr_Clear();
        PyErr_SetString(PyExc_OverflowError, "event_rows: offset_ns beyond 64 bits");
        return NULL;
    }
    PyObject *zero = PyLong_FromLong(0);
    if (zero == NULL)
        return NULL;
    for (Py_ssize_t i = 0; i < PyList_GET_SIZE(evs); i++) {
        PyObject *ev = PyList_GET_ITEM(evs, i), *row, *to;
        Py_INCREF(ev);
        if (Py_TYPE(ev) == (PyTypeObject *)Connect_t) {
            row = connect_row(ev, offset, offset_obj, container, established);
            to = connects;
        } else if (Py_TYPE(ev) == (PyTypeObject *)Accept_t) {
            row = accept_row(ev, offset, offset_obj, container, zero);
            to = accepts;
        } else {
            Py_DECREF(ev);
            continue;
        }
        Py_DECREF(ev);
        if (row == NULL || PyList_Append(to, row) < 0) {
            Py_XDECREF(row);
            Py_DECREF(zero);
            return NULL;
        }
        Py_DECREF(row);
    }
    Py_DECREF(zero);
    Py_RETURN_NONE;
}

/* ------------------------------------------------------------ tally */

/* tally(events, established, slow_ns): one poll's events summed per key of
 * each live table, in C, so the tables are fed once a key and not once an
 * event (tracer/aggregate/tally.py, which says what each part is and how
 * each table takes it; Collector._drain's loop over the events stays the
 * definition: tests/unit/test_tally.py). None when an event is of a
 * subclass of Connect or Accept (the caller then runs the loop). */

/* d[key], made by make() (a new reference) when not there; borrowed. */
static PyObject *entry(PyObject *d, PyObject *key, PyObject *(*make)(void))
{
    PyObject *v = PyDict_GetItemWithError(d, key);
    if (v != NULL || PyErr_Occurred())
        return v;
    if ((v = make()) == NULL)
        return NULL;
    int bad = PyDict_SetItem(d, key, v);
    Py_DECREF(v);
    return bad ? NULL : v;
}

static PyObject *count_and_list(void)   /* [0, []] */
{
    return Py_BuildValue("[i[]]", 0);
}

static PyObject *count_and_none(void)   /* [0, None]: opened's count and last comm */
{
    return Py_BuildValue("[iO]", 0, Py_None);
}

/* l[i] += by (l a list, by a new reference, stolen); -1 on an error. */
static int list_add(PyObject *l, Py_ssize_t i, PyObject *by)
{
    if (by == NULL)
        return -1;
    PyObject *sum = PyNumber_Add(PyList_GET_ITEM(l, i), by);
    Py_DECREF(by);
    if (sum == NULL)
        return -1;
    PyList_SetItem(l, i, sum);     /* steals sum, releases the old value */
    return 0;
}

/* [n, values]: n += 1, and value appended unless None (stolen). */
static int count_value(PyObject *cl, PyObject *value)
{
    if (value == NULL)
        return -1;
    int bad = list_add(cl, 0, PyLong_FromLong(1)) < 0
        || (value != Py_None && PyList_Append(PyList_GET_ITEM(cl, 1), value) < 0);
    Py_DECREF(value);
    return bad ? -1 : 0;
}

static PyObject *tuple_of(PyObject **f, const int *pick, int n)
{
    PyObject *t = PyTuple_New(n);
    if (t != NULL)
        for (int k = 0; k < n; k++)
            PyTuple_SET_ITEM(t, k, ref(f[pick[k]]));
    return t;
}

struct tally {
    PyObject *edges, *listeners, *notes, *opened, *flows, *notable, *pids, *cgroup_ids;
    PyObject *established, *slow_ns;
};

/* processes.opened(pid, comm, ...): opened[pid] = [n + 1, comm] (its last). */
static int count_opened(struct tally *t, PyObject *pid, PyObject *comm)
{
    PyObject *o = entry(t->opened, pid, count_and_none);
    if (o == NULL || list_add(o, 0, PyLong_FromLong(1)) < 0)
        return -1;
    PyList_SetItem(o, 1, ref(comm));
    return 0;
}

/* One Connect: Collector._drain's edges.add, log.wants_connect and, when
 * established, processes.opened. */
static int tally_connect(struct tally *t, PyObject *ev)
{
    PyObject *f[TC_USED] = {NULL}, *key = NULL, *lat = NULL;
    int rc = -1;
    if (fields_of(ev, &connect_layout, tc_used_str, tc_used_at, TC_USED, f) < 0)
        goto done;
    /* f: pid 0, family 1, daddr 2, dport 3, comm 4, saddr 5, netns 6, outcome 7,
     * syn_retransmits 8, ts_start_ns 9, ts_end_ns 10, cgroup_id 11 */
    if (PyList_Append(t->pids, f[0]) < 0 || PyList_Append(t->cgroup_ids, f[11]) < 0)
        goto done;
    static const int edge_key[] = {0, 1, 2, 3};
    if ((key = tuple_of(f, edge_key, 4)) == NULL)
        goto done;
    PyObject *e = PyDict_GetItemWithError(t->edges, key);   /* borrowed */
    if (e == NULL) {
        if (PyErr_Occurred())
            goto done;
        /* [first event, SYN retransmits, {outcome: [n, latencies]}, own source, netns] */
        PyObject *fresh = Py_BuildValue("[OiNOi]", ev, 0, PyDict_New(), Py_False, 0);
        if (fresh == NULL)
            goto done;
        int bad = PyDict_SetItem(t->edges, key, fresh);
        Py_DECREF(fresh);
        if (bad)
            goto done;
        e = fresh;
    }
    if (list_add(e, 1, ref(f[8])) < 0)
        goto done;
    if ((lat = latency_of(ev)) == NULL)
        goto done;
    PyObject *cl = entry(PyList_GET_ITEM(e, 2), f[7], count_and_list);
    if (cl == NULL || count_value(cl, ref(lat)) < 0)
        goto done;
    if (PyList_GET_ITEM(e, 3) == Py_False) {
        int own = PyObject_RichCompareBool(f[5], f[2], Py_EQ);
        if (own < 0)
            goto done;
        if (own)
            PyList_SetItem(e, 3, ref(Py_True));
    }
    int netns_unset = PyObject_Not(PyList_GET_ITEM(e, 4));
    if (netns_unset < 0)
        goto done;
    if (netns_unset) {
        int has = PyObject_IsTrue(f[6]);
        if (has < 0)
            goto done;
        if (has)
            PyList_SetItem(e, 4, ref(f[6]));
    }
    /* NotableLog.wants_connect */
    int est = PyObject_RichCompareBool(f[7], t->established, Py_EQ);
    if (est < 0)
        goto done;
    int wants = !est;
    if (est) {
        PyObject *took = PyNumber_Subtract(f[10], f[9]);
        if (took == NULL)
            goto done;
        wants = PyObject_RichCompareBool(took, t->slow_ns, Py_GE);
        Py_DECREF(took);
        if (wants < 0)
            goto done;
    }
    if (wants && PyList_Append(t->notable, ev) < 0)
        goto done;
    if (est) {
        if (count_opened(t, f[0], f[4]) < 0)
            goto done;
        PyObject *fl = entry(t->flows, key, count_and_list);
        if (fl == NULL || count_value(fl, ref(lat)) < 0)
            goto done;
    }
    rc = 0;
done:
    for (int k = 0; k < TC_USED; k++)
        Py_XDECREF(f[k]);
    Py_XDECREF(key);
    Py_XDECREF(lat);
    return rc;
}

/* One Accept: listeners.add_accept, edges.add_accept (the address's owner,
 * noted last-seen last) and processes.opened. */
static int tally_accept(struct tally *t, PyObject *ev)
{
    PyObject *f[TA_USED] = {NULL}, *key = NULL, *note = NULL;
    int rc = -1;
    if (fields_of(ev, &accept_layout, ta_used_str, ta_used_at, TA_USED, f) < 0)
        goto done;
    /* f: pid 0, comm 1, family 2, laddr 3, lport 4, netns 5 */
    if (PyList_Append(t->pids, f[0]) < 0)
        goto done;
    static const int listener_key[] = {5, 2, 3, 4}, note_key[] = {5, 2, 3};
    if ((key = tuple_of(f, listener_key, 4)) == NULL || (note = tuple_of(f, note_key, 3)) == NULL)
        goto done;
    PyObject *l = entry(t->listeners, key, count_and_list);
    if (l == NULL || count_value(l, queue_wait_of(ev)) < 0)
        goto done;
    if (PyDict_Contains(t->notes, note) == 1 && PyDict_DelItem(t->notes, note) < 0)
        goto done;
    if (PyErr_Occurred() || PyDict_SetItem(t->notes, note, Py_None) < 0)
        goto done;
    if (count_opened(t, f[0], f[1]) < 0)
        goto done;
    rc = 0;
done:
    for (int k = 0; k < TA_USED; k++)
        Py_XDECREF(f[k]);
    Py_XDECREF(key);
    Py_XDECREF(note);
    return rc;
}

static PyObject *fp_tally(PyObject *self, PyObject *args)
{
    PyObject *evs;
    struct tally t = {0};
    if (!PyArg_ParseTuple(args, "O!OO", &PyList_Type, &evs, &t.established, &t.slow_ns))
        return NULL;
    if (!configured())
        return NULL;
    PyObject *out = NULL;
    PyObject **parts[] = {&t.edges, &t.listeners, &t.notes, &t.opened, &t.flows};
    for (size_t i = 0; i < 5; i++)
        if ((*parts[i] = PyDict_New()) == NULL)
            goto done;
    if ((t.notable = PyList_New(0)) == NULL || (t.pids = PyList_New(0)) == NULL
            || (t.cgroup_ids = PyList_New(0)) == NULL)
        goto done;
    for (Py_ssize_t i = 0; i < PyList_GET_SIZE(evs); i++) {
        PyObject *ev = PyList_GET_ITEM(evs, i);
        int rc = 0;
        Py_INCREF(ev);
        if (Py_TYPE(ev) == (PyTypeObject *)Connect_t) {
            rc = tally_connect(&t, ev);
        } else if (Py_TYPE(ev) == (PyTypeObject *)Accept_t) {
            rc = tally_accept(&t, ev);
        } else {
            int sub = PyObject_IsInstance(ev, Connect_t);
            if (sub == 0)
                sub = PyObject_IsInstance(ev, Accept_t);
            if (sub != 0) {           /* a subclass (the loop's), or an error */
                Py_DECREF(ev);
                if (sub > 0)
                    out = ref(Py_None);
                goto done;
            }
        }
        Py_DECREF(ev);
        if (rc < 0)
            goto done;
    }
    out = PyTuple_Pack(8, t.edges, t.listeners, t.notes, t.opened, t.flows, t.notable, t.pids,
                       t.cgroup_ids);
done:
    for (size_t i = 0; i < 5; i++)
        Py_XDECREF(*parts[i]);
    Py_XDECREF(t.notable);
    Py_XDECREF(t.pids);
    Py_XDECREF(t.cgroup_ids);
    return out;
}

/* ------------------------------------------------------------ histogram */

/* HistogramCore: the instance layout of tracer/aggregate/histogram.py's
 * Histogram (its five attributes, as __slots__ would hold them) and its
 * add() for the one case the event path makes thousands of times a second:
 * a float value, n == 1, into a dict of int counts. Every other case (an int
 * or any other value, n != 1, NaN, infinity, a value beyond 2**62, counts
 * or totals of other types) is handed to the class's own _add_any, the
 * Python definition, which stays the reference
 * (tests/unit/test_histogram.py runs both on the same values). */
typedef struct {
    PyObject_HEAD
    PyObject *counts, *count, *total, *min, *max;
} HistogramCore;

static PyObject *str_add_any;

static int hc_traverse(HistogramCore *h, visitproc visit, void *arg)
{
    Py_VISIT(h->counts);
    Py_VISIT(h->count);
    Py_VISIT(h->total);
    Py_VISIT(h->min);
    Py_VISIT(h->max);
    return 0;
}

static int hc_clear(HistogramCore *h)
{
    Py_CLEAR(h->counts);
    Py_CLEAR(h->count);
    Py_CLEAR(h->total);
    Py_CLEAR(h->min);
    Py_CLEAR(h->max);
    return 0;
}

static void hc_dealloc(HistogramCore *h)
{
    /* (a subclass's instance comes here from subtype_dealloc, which then
     * releases the subclass itself) */
    PyObject_GC_UnTrack(h);
    hc_clear(h);
    Py_TYPE(h)->tp_free((PyObject *)h);
}

/* The bucket of int(v) for a finite v with |v| < 2**62 (histogram.py
 * bucket_of / Histogram.add, SUB_BITS 5). */
#define HIST_SUB_BITS 5
#define HIST_SUB (1LL << HIST_SUB_BITS)
static long long hist_bucket(double v)
{
    long long iv = (long long)v;            /* int(): toward zero */
    if (iv < HIST_SUB)
        return iv > 0 ? iv : 0;
    int shift = 63 - __builtin_clzll((unsigned long long)iv) - HIST_SUB_BITS;
    return (shift + 1) * HIST_SUB + ((iv >> shift) - HIST_SUB);
}

/* The call as it came, to the class's _add_any (the Python definition). */
static PyObject *hc_add_any(HistogramCore *h, PyObject *const *args, Py_ssize_t nargs,
                            PyObject *kwnames)
{
    PyObject *all[4] = {(PyObject *)h};
    Py_ssize_t given = nargs + (kwnames ? PyTuple_GET_SIZE(kwnames) : 0);
    if (given > 3) {
        PyErr_Format(PyExc_TypeError, "add() takes at most 2 arguments (%zd given)", given);
        return NULL;
    }
    for (Py_ssize_t i = 0; i < given; i++)
        all[i + 1] = args[i];
    return PyObject_VectorcallMethod(str_add_any, all, nargs + 1, kwnames);
}

static PyObject *one;   /* 1 */

static PyObject *hc_add(HistogramCore *h, PyObject *const *args, Py_ssize_t nargs,
                        PyObject *kwnames)
{
    if (kwnames != NULL || nargs < 1 || nargs > 2)
        return hc_add_any(h, args, nargs, kwnames);
    PyObject *value = args[0], *n = nargs == 2 ? args[1] : NULL;
    if (!PyFloat_CheckExact(value) || (n != NULL && !(PyLong_CheckExact(n) && PyLong_AsLong(n) == 1))
            || h->counts == NULL || !PyDict_CheckExact(h->counts)
            || h->count == NULL || !PyLong_CheckExact(h->count)
            || h->total == NULL || !PyFloat_CheckExact(h->total)
            || h->min == NULL || !PyFloat_CheckExact(h->min)
            || h->max == NULL || !PyFloat_CheckExact(h->max)) {
        PyErr_Clear();
        return hc_add_any(h, args, nargs, NULL);
    }
    double v = PyFloat_AS_DOUBLE(value);
    if (!(v > -4.6e18 && v < 4.6e18))       /* NaN, infinities, beyond 2**62 */
        return hc_add_any(h, args, nargs, NULL);
    PyObject *key = PyLong_FromLongLong(hist_bucket(v));
    if (key == NULL)
        return NULL;
    PyObject *old = PyDict_GetItemWithError(h->counts, key);   /* borrowed */
    PyObject *now;
    if (old != NULL) {
        Py_INCREF(old);
        now = PyNumber_Add(old, one);
        Py_DECREF(old);
    } else if (PyErr_Occurred()) {
        now = NULL;
    } else {
        now = PyLong_FromLong(1);
    }
    if (now == NULL || PyDict_SetItem(h->counts, key, now) < 0) {
        Py_XDECREF(now);
        Py_DECREF(key);
        return NULL;
    }
    Py_DECREF(now);
    Py_DECREF(key);
    PyObject *count = PyNumber_Add(h->count, one);
    if (count == NULL)
        return NULL;
    Py_SETREF(h->count, count);
    PyObject *total = PyFloat_FromDouble(PyFloat_AS_DOUBLE(h->total) + v);
    if (total == NULL)
        return NULL;
    Py_SETREF(h->total, total);
    if (v < PyFloat_AS_DOUBLE(h->min)) {
        Py_INCREF(value);
        Py_SETREF(h->min, value);
    }
    if (v > PyFloat_AS_DOUBLE(h->max)) {
        Py_INCREF(value);
        Py_SETREF(h->max, value);
    }
    Py_RETURN_NONE;
}

/* add_all(values): add(v) for each v in order (Histogram._add_each, the
 * definition); what add() does not take in C goes to _add_any as there. */
static PyObject *hc_add_all(HistogramCore *h, PyObject *values)
{
    PyObject *it = PyObject_GetIter(values), *v;
    if (it == NULL)
        return NULL;
    while ((v = PyIter_Next(it)) != NULL) {
        PyObject *r = hc_add(h, &v, 1, NULL);
        Py_DECREF(v);
        if (r == NULL) {
            Py_DECREF(it);
            return NULL;
        }
        Py_DECREF(r);
    }
    Py_DECREF(it);
    if (PyErr_Occurred())
        return NULL;
    Py_RETURN_NONE;
}

static PyMemberDef hc_members[] = {
    {"counts", T_OBJECT_EX, offsetof(HistogramCore, counts), 0, NULL},
    {"count", T_OBJECT_EX, offsetof(HistogramCore, count), 0, NULL},
    {"total", T_OBJECT_EX, offsetof(HistogramCore, total), 0, NULL},
    {"min", T_OBJECT_EX, offsetof(HistogramCore, min), 0, NULL},
    {"max", T_OBJECT_EX, offsetof(HistogramCore, max), 0, NULL},
    {NULL, 0, 0, 0, NULL},
};

static PyMethodDef hc_methods[] = {
    {"add", (PyCFunction)(void (*)(void))hc_add, METH_FASTCALL | METH_KEYWORDS,
     "add(value, n=1): Histogram.add (tracer/aggregate/histogram.py)"},
    {"add_all", (PyCFunction)hc_add_all, METH_O,
     "add_all(values): add() of each, in order (Histogram._add_each)"},
    {NULL, NULL, 0, NULL},
};

static PyTypeObject HistogramCore_Type = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "tracer._fastpath.HistogramCore",
    .tp_basicsize = sizeof(HistogramCore),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE | Py_TPFLAGS_HAVE_GC,
    .tp_doc = "Histogram's attributes and its float add (tracer/aggregate/histogram.py)",
    .tp_traverse = (traverseproc)hc_traverse,
    .tp_clear = (inquiry)hc_clear,
    .tp_dealloc = (destructor)hc_dealloc,
    .tp_members = hc_members,
    .tp_methods = hc_methods,
    .tp_new = PyType_GenericNew,
};

static PyMethodDef methods[] = {
    {"configure", fp_configure, METH_VARARGS,
     "configure(Connect, Accept, addr_cache, addr_slow, comm_cache, comm_slow, outcomes, "
     "unknown_outcome, early_max, max_open, Connect's fields, Accept's fields)"},
    {"slots_filled", fp_slots_filled, METH_NOARGS,
     "(Connect, Accept): whether events are made by filling their slots (configure)"},
    {"walk_ring", fp_walk_ring, METH_VARARGS,
     "walk_ring(data, mask, cons, producer, limit, pending, closes, open) -> (cons, n, errors)"},
    {"sizes", fp_sizes, METH_NOARGS, "sizeof of each record struct, as compiled"},
    {"diag_messages", fp_diag_messages, METH_VARARGS,
     "diag_messages(data, seq, out, TcpSocket) -> offset: tracer/probes/sock_diag.py parse_datagram's bulk"},
    {"arrow_columns", fp_arrow_columns, METH_VARARGS,
     "arrow_columns(rows, kinds) -> [(null_count, validity, data, offsets) or None]: "
     "tracer/sinks/table_writer.py columns_of_rows"},
    {"event_rows", fp_event_rows, METH_VARARGS,
     "event_rows(events, offset_ns, container, connects, accepts, established): "
     "tracer/sinks/recorder.py RecordSink.on_events' rows"},
    {"front_slot", fp_front_slot, METH_VARARGS,
     "front_slot(family, raw16) -> the front cache's slot of an address (comm: family 0)"},
    {"tally", fp_tally, METH_VARARGS,
     "tally(events, established, slow_ns) -> (edges, listeners, notes, opened, flows, notable, "
     "pids, cgroup_ids) "
     "or None: tracer/aggregate/tally.py"},
    {"fd_sockets", fp_fd_sockets, METH_VARARGS,
     "fd_sockets(pid) -> (fds, {socket inode}) or None: tracer/probes/procfs.py _scan_fd_dir"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "tracer._fastpath",
    "The compiled event path, fd-table scan, sock_diag parser, rows-to-Arrow columns and histogram add (see tracer/fastpath.py).", -1, methods,
};

PyMODINIT_FUNC PyInit__fastpath(void)
{
    struct { PyObject **slot; const char *text; } names[] = {
        {&str_open, "_open"}, {&str_early, "_early"}, {&str_early_prev, "_early_prev"},
        {&str_live, "_live"}, {&str_active, "active"}, {&str_passive, "passive"},
        {&str_peaks, "peaks"}, {&str_opened, "_opened"},
    };
    for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++)
        if ((*names[i].slot = PyUnicode_InternFromString(names[i].text)) == NULL)
            return NULL;
    for (int k = 0; k < CONNECT_USED; k++)
        if ((connect_used_str[k] = PyUnicode_InternFromString(connect_used[k])) == NULL)
            return NULL;
    for (int k = 0; k < ACCEPT_USED; k++)
        if ((accept_used_str[k] = PyUnicode_InternFromString(accept_used[k])) == NULL)
            return NULL;
    for (int k = 0; k < 2; k++)
        if ((lat_used_str[k] = PyUnicode_InternFromString(lat_used[k])) == NULL
                || (wait_used_str[k] = PyUnicode_InternFromString(wait_used[k])) == NULL)
            return NULL;
    for (int k = 0; k < TC_USED; k++)
        if ((tc_used_str[k] = PyUnicode_InternFromString(tc_used[k])) == NULL)
            return NULL;
    for (int k = 0; k < TA_USED; k++)
        if ((ta_used_str[k] = PyUnicode_InternFromString(ta_used[k])) == NULL)
            return NULL;
    if ((str_latency_us = PyUnicode_InternFromString("latency_us")) == NULL
            || (str_queue_wait_us = PyUnicode_InternFromString("queue_wait_us")) == NULL)
        return NULL;
    if ((str_add_any = PyUnicode_InternFromString("_add_any")) == NULL
            || (one = PyLong_FromLong(1)) == NULL)
        return NULL;
    if (PyType_Ready(&HistogramCore_Type) < 0)
        return NULL;
    PyObject *m = PyModule_Create(&module);
    if (m && PyModule_AddIntConstant(m, "ABI_VERSION", ABI_VERSION) < 0)
        Py_CLEAR(m);
    if (m) {
        Py_INCREF(&HistogramCore_Type);
        if (PyModule_AddObject(m, "HistogramCore", (PyObject *)&HistogramCore_Type) < 0) {
            Py_DECREF(&HistogramCore_Type);
            Py_CLEAR(m);
        }
    }
    return m;
}
