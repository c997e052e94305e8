/* msgbus._speedups — the binding's hot paths in C (CPython C API).
 *
 * Optional: _core.py uses it when it imports, and the plain ctypes path
 * otherwise (or with MSGBUS_PY_NO_SPEEDUPS=1); both behave the same.
 *
 * It does not link against libmsgbus: init() takes the addresses of the
 * functions it calls from the library ctypes loaded (ctypes.cast(fn,
 * c_void_p).value), so it always calls the same library as the rest of
 * the binding. Every function takes and returns plain ints for pointers
 * (as ctypes does) and returns the library's error codes to Python, which
 * raises the same typed errors as the ctypes path.
 *
 * Delivery reports: publish() hands libmsgbus a C callback that appends
 * (token, status, error) to the bus's Reports queue under its mutex,
 * without the GIL, when served by poll() or flush() here; Bus.poll and
 * Bus.flush settle them (Reports.finish) once the C call returns, in
 * order, on that thread. Served on any other thread, a report is settled
 * there at once, with the GIL (as a ctypes callback would be). */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <pthread.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#if PY_VERSION_HEX < 0x03090000 /* Python 3.8 */
#define PyObject_CallOneArg(f, a) PyObject_CallFunctionObjArgs((f), (a), NULL)
#define PyObject_CallMethodNoArgs(o, n) PyObject_CallMethodObjArgs((o), (n), NULL)
#define PyObject_Vectorcall _PyObject_Vectorcall
#define Py_TPFLAGS_HAVE_VECTORCALL _Py_TPFLAGS_HAVE_VECTORCALL
#endif

typedef struct msgbus_msg msgbus_msg_t;
typedef struct msgbus msgbus_t;
typedef struct msgbus_sub msgbus_sub_t;
typedef int msgbus_err_t;
typedef struct {
    const char *topic;
    const char *msg_id;
    msgbus_err_t status;
    const char *error;
} report_t;
typedef void (*delivery_cb)(void *opaque, const report_t *report);

static struct {
    msgbus_err_t (*msg_new)(msgbus_msg_t **, const void *, size_t);
    void (*msg_free)(msgbus_msg_t *);
    const void *(*msg_payload)(const msgbus_msg_t *, size_t *);
    const char *(*msg_id)(const msgbus_msg_t *);
    msgbus_err_t (*publish)(msgbus_t *, const char *, const msgbus_msg_t *, delivery_cb, void *);
    msgbus_err_t (*receive_batch)(msgbus_sub_t *, size_t, int, msgbus_msg_t **, size_t *);
    msgbus_err_t (*ack)(msgbus_msg_t *);
    msgbus_err_t (*poll)(msgbus_t *, int, int *);
    msgbus_err_t (*flush)(msgbus_t *, int, size_t *);
} fn;
static int ready;

/* The Message class and the descriptors of the slots take() fills. */
static PyTypeObject *msg_type;
static PyObject *d_ptr, *d_settled, *d_span, *d_payload, *d_id;
/* The Delivery class and its slots (publish_payload makes them). */
static PyTypeObject *dlv_type;
#define DLV_SLOTS 7
static const char *dlv_slots[DLV_SLOTS] = {"_bus", "topic", "message_id", "_status",
                                           "_exc", "_callbacks", "_span"};
static PyObject *d_dlv[DLV_SLOTS];
static PyObject *get_slot(PyObject *descr, PyObject *obj);

#define ERR_TIMEOUT 4
#define ERR_NOMEM 2

/* ------------------------------------------------------------ helpers */

static int get_ptr(PyObject *o, void **out)
{
    if (o == Py_None) {
        *out = NULL;
        return 0;
    }
    void *p = PyLong_AsVoidPtr(o);
    if (!p && PyErr_Occurred())
        return -1;
    *out = p;
    return 0;
}

static int need_ready(void)
{
    if (!ready) {
        PyErr_SetString(PyExc_RuntimeError, "msgbus._speedups: init() was not called");
        return -1;
    }
    return 0;
}

static int set_slot(PyObject *descr, PyObject *obj, PyObject *v)
{
    descrsetfunc f = Py_TYPE(descr)->tp_descr_set;
    return f(descr, obj, v);
}

/* ------------------------------------------------------------ Reports */

struct entry {
    uint64_t token;
    int status;
    char *error; /* malloc'd, NULL on success */
};

struct queue {
    pthread_mutex_t mu;
    struct entry *v;
    size_t n, cap;
    PyObject *pending; /* token -> Delivery (_core._pending); a strong reference */
};

/* Set while this thread is inside poll() or flush() below: reports
 * served then are queued and settled by the caller once the call
 * returns. A report served on any other thread (msgbus_close through
 * ctypes, or the C outbox relay's thread polling the bus) is settled at
 * once on that thread, as the ctypes path's callback does. */
static _Thread_local int serving;

static void finish_entries(struct entry *v, size_t n, PyObject *pending);
static void finish_queue(struct queue *q);

typedef struct {
    PyObject_HEAD
    struct queue *q;
} Reports;

/* What libmsgbus carries to the callback: the queue and the token. */
struct opaque {
    struct queue *q;
    uint64_t token;
};

static void on_report(void *opaque, const report_t *r)
{
    struct opaque *o = opaque;
    struct queue *q = o->q;
    char *err = NULL;
    if (r->status != 0)
        err = strdup(r->error ? r->error : "");
    pthread_mutex_lock(&q->mu);
    if (q->n == q->cap) {
        size_t cap = q->cap ? q->cap * 2 : 256;
        struct entry *v = realloc(q->v, cap * sizeof *v);
        if (!v) { /* the outcome is lost: the Delivery fails at close */
            pthread_mutex_unlock(&q->mu);
            free(err);
            free(o);
            return;
        }
        q->v = v;
        q->cap = cap;
    }
    q->v[q->n].token = o->token;
    q->v[q->n].status = r->status;
    q->v[q->n].error = err;
    q->n++;
    pthread_mutex_unlock(&q->mu);
    free(o);
    if (!serving && Py_IsInitialized()) {
        PyGILState_STATE g = PyGILState_Ensure();
        finish_queue(q);
        PyGILState_Release(g);
    }
}

static PyObject *Reports_new(PyTypeObject *t, PyObject *a, PyObject *k)
{
    PyObject *pending;
    if (k || !PyArg_ParseTuple(a, "O!:Reports", &PyDict_Type, &pending)) {
        if (!PyErr_Occurred())
            PyErr_SetString(PyExc_TypeError, "Reports(pending: dict)");
        return NULL;
    }
    Reports *self = (Reports *)t->tp_alloc(t, 0);
    if (!self)
        return NULL;
    self->q = calloc(1, sizeof *self->q);
    if (!self->q) {
        Py_DECREF(self);
        return PyErr_NoMemory();
    }
    pthread_mutex_init(&self->q->mu, NULL);
    Py_INCREF(pending);
    self->q->pending = pending;
    return (PyObject *)self;
}

static void Reports_dealloc(Reports *self)
{
    /* The bus that used it is closed (Bus holds it until then): no
     * callback can reach it any more. */
    struct queue *q = self->q;
    if (q) {
        for (size_t i = 0; i < q->n; i++)
            free(q->v[i].error);
        free(q->v);
        Py_XDECREF(q->pending);
        pthread_mutex_destroy(&q->mu);
        free(q);
    }
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyObject *get_slot(PyObject *descr, PyObject *obj)
{
    return Py_TYPE(descr)->tp_descr_get(descr, obj, (PyObject *)Py_TYPE(obj));
}

/* finish(pending) — settles the Deliveries of the queued reports, in
 * order: each is popped from pending (token -> Delivery); a success with
 * no span and no done-callbacks is settled here (_status 0, _bus None),
 * anything else by its own _finish(status, error). Delivery.add_done_callback
 * re-checks _status after adding its callback, so a callback added while
 * this runs is not lost (see there). Errors go to sys.unraisablehook. */
static PyObject *Reports_finish(Reports *self, PyObject *unused)
{
    (void)unused;
    finish_queue(self->q);
    Py_RETURN_NONE;
}

/* Takes the queued reports and settles them (with the GIL). */
static void finish_queue(struct queue *q)
{
    struct entry *v;
    size_t n;
    pthread_mutex_lock(&q->mu);
    v = q->v;
    n = q->n;
    if (n) {
        q->v = NULL;
        q->n = q->cap = 0;
    }
    pthread_mutex_unlock(&q->mu);
    if (n)
        finish_entries(v, n, q->pending);
}

static void finish_entries(struct entry *v, size_t n, PyObject *pending)
{
    PyObject *exc_type, *exc_val, *exc_tb;
    PyErr_Fetch(&exc_type, &exc_val, &exc_tb);
    for (size_t i = 0; i < n; i++) {
        PyObject *key = PyLong_FromUnsignedLongLong(v[i].token);
        PyObject *d = key ? PyDict_GetItemWithError(pending, key) : NULL;
        if (d) {
            Py_INCREF(d);
            if (PyDict_DelItem(pending, key) < 0)
                PyErr_Clear();
        }
        Py_XDECREF(key);
        if (!d) {
            if (PyErr_Occurred())
                PyErr_WriteUnraisable(pending);
            free(v[i].error);
            continue;
        }
        int done = 0;
        if (v[i].status == 0 && Py_TYPE(d) == dlv_type) {
            PyObject *span = get_slot(d_dlv[6], d), *cbs = get_slot(d_dlv[5], d);
            if (span == Py_None && cbs == Py_None) {
                PyObject *zero = PyLong_FromLong(0);
                done = zero && set_slot(d_dlv[3], d, zero) == 0 &&
                       set_slot(d_dlv[0], d, Py_None) == 0;
                Py_XDECREF(zero);
            }
            Py_XDECREF(span);
            Py_XDECREF(cbs);
            if (PyErr_Occurred()) {
                PyErr_WriteUnraisable(d);
                done = 0;
            }
        }
        if (!done) {
            PyObject *err = v[i].error ? PyBytes_FromString(v[i].error) : (Py_INCREF(Py_None), Py_None);
            PyObject *r = err ? PyObject_CallMethod(d, "_finish", "iO", v[i].status, err) : NULL;
            if (!r)
                PyErr_WriteUnraisable(d);
            Py_XDECREF(r);
            Py_XDECREF(err);
        }
        free(v[i].error);
        Py_DECREF(d);
    }
    free(v);
    PyErr_Restore(exc_type, exc_val, exc_tb);
}

static PyMethodDef Reports_methods[] = {
    {"finish", (PyCFunction)Reports_finish, METH_NOARGS,
     "finish(): settles the Deliveries of the reports queued since the last call."},
    {NULL, NULL, 0, NULL}};

static PyTypeObject ReportsType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "msgbus._speedups.Reports",
    .tp_basicsize = sizeof(Reports),
    .tp_dealloc = (destructor)Reports_dealloc,
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "A bus's queue of delivery reports (filled by libmsgbus's callback).",
    .tp_methods = Reports_methods,
    .tp_new = Reports_new,
};

/* ------------------------------------------------------------ module functions */

/* Looks up the slot descriptors `names` of class t into out (new refs). */
static int slot_descrs(PyTypeObject *t, const char **names, int n, PyObject **out)
{
    for (int i = 0; i < n; i++) {
        out[i] = PyObject_GetAttrString((PyObject *)t, names[i]);
        if (!out[i] || !Py_TYPE(out[i])->tp_descr_set) {
            for (int j = 0; j <= i; j++)
                Py_CLEAR(out[j]);
            if (!PyErr_Occurred())
                PyErr_Format(PyExc_TypeError, "msgbus._speedups.init: %s.%s is not a slot",
                             t->tp_name, names[i]);
            return -1;
        }
    }
    return 0;
}

/* init(addresses: dict name -> int, Message class, Delivery class) */
static PyObject *sp_init(PyObject *mod, PyObject *const *args, Py_ssize_t nargs)
{
    (void)mod;
    if (nargs != 3 || !PyDict_Check(args[0]) || !PyType_Check(args[1]) ||
        !PyType_Check(args[2])) {
        PyErr_SetString(PyExc_TypeError, "init(addresses: dict, Message: type, Delivery: type)");
        return NULL;
    }
    static const char *names[] = {"msgbus_msg_new", "msgbus_msg_free", "msgbus_msg_payload",
                                  "msgbus_msg_id", "msgbus_publish", "msgbus_receive_batch",
                                  "msgbus_ack", "msgbus_poll", "msgbus_flush"};
    void *addr[sizeof names / sizeof names[0]];
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++) {
        PyObject *v = PyDict_GetItemString(args[0], names[i]);
        if (!v || (get_ptr(v, &addr[i]) < 0) || !addr[i]) {
            if (!PyErr_Occurred())
                PyErr_Format(PyExc_KeyError, "msgbus._speedups.init: no address for %s",
                             names[i]);
            return NULL;
        }
    }
    /* ISO C forbids converting object pointers to function pointers
     * directly; memcpy of the address is the portable way. */
    memcpy(&fn.msg_new, &addr[0], sizeof(void *));
    memcpy(&fn.msg_free, &addr[1], sizeof(void *));
    memcpy(&fn.msg_payload, &addr[2], sizeof(void *));
    memcpy(&fn.msg_id, &addr[3], sizeof(void *));
    memcpy(&fn.publish, &addr[4], sizeof(void *));
    memcpy(&fn.receive_batch, &addr[5], sizeof(void *));
    memcpy(&fn.ack, &addr[6], sizeof(void *));
    memcpy(&fn.poll, &addr[7], sizeof(void *));
    memcpy(&fn.flush, &addr[8], sizeof(void *));

    PyTypeObject *t = (PyTypeObject *)args[1];
    PyObject *ds[5], *dd[DLV_SLOTS];
    static const char *slots[] = {"_ptr", "_settled", "_span", "payload", "id"};
    if (slot_descrs(t, slots, 5, ds) < 0)
        return NULL;
    if (slot_descrs((PyTypeObject *)args[2], dlv_slots, DLV_SLOTS, dd) < 0) {
        for (int i = 0; i < 5; i++)
            Py_DECREF(ds[i]);
        return NULL;
    }
    for (int i = 0; i < DLV_SLOTS; i++)
        Py_XSETREF(d_dlv[i], dd[i]);
    Py_INCREF(args[2]);
    Py_XSETREF(dlv_type, (PyTypeObject *)args[2]);
    Py_XSETREF(d_ptr, ds[0]);
    Py_XSETREF(d_settled, ds[1]);
    Py_XSETREF(d_span, ds[2]);
    Py_XSETREF(d_payload, ds[3]);
    Py_XSETREF(d_id, ds[4]);
    Py_INCREF(t);
    Py_XSETREF(msg_type, t);
    ready = 1;
    Py_RETURN_NONE;
}

/* msg_new(payload bytes) -> message address (int > 0), or -error code */
static PyObject *sp_msg_new(PyObject *mod, PyObject *arg)
{
    (void)mod;
    if (need_ready() < 0)
        return NULL;
    char *buf;
    Py_ssize_t len;
    if (PyBytes_AsStringAndSize(arg, &buf, &len) < 0)
        return NULL;
    msgbus_msg_t *m = NULL;
    msgbus_err_t e = fn.msg_new(&m, buf, (size_t)len);
    if (e != 0)
        return PyLong_FromLong(-(long)e);
    return PyLong_FromVoidPtr(m);
}

/* msg_id(message) -> str or None */
static PyObject *sp_msg_id(PyObject *mod, PyObject *arg)
{
    (void)mod;
    void *m;
    if (need_ready() < 0 || get_ptr(arg, &m) < 0)
        return NULL;
    const char *id = m ? fn.msg_id(m) : NULL;
    if (!id)
        Py_RETURN_NONE;
    return PyUnicode_DecodeUTF8(id, (Py_ssize_t)strlen(id), "surrogateescape");
}

/* msg_free(message): without the GIL (freeing a received message may
 * take its subscription's lock). */
static PyObject *sp_msg_free(PyObject *mod, PyObject *arg)
{
    (void)mod;
    void *m;
    if (need_ready() < 0 || get_ptr(arg, &m) < 0)
        return NULL;
    if (m) {
        Py_BEGIN_ALLOW_THREADS
        fn.msg_free(m);
        Py_END_ALLOW_THREADS
    }
    Py_RETURN_NONE;
}

/* ack(message) -> error code */
static PyObject *sp_ack(PyObject *mod, PyObject *arg)
{
    (void)mod;
    void *m;
    if (need_ready() < 0 || get_ptr(arg, &m) < 0)
        return NULL;
    msgbus_err_t e;
    Py_BEGIN_ALLOW_THREADS
    e = fn.ack(m);
    Py_END_ALLOW_THREADS
    return PyLong_FromLong(e);
}

/* publish(reports, bus, topic bytes, message, token) -> error code */
static PyObject *sp_publish(PyObject *mod, PyObject *const *args, Py_ssize_t nargs)
{
    (void)mod;
    if (need_ready() < 0)
        return NULL;
    if (nargs != 5 || Py_TYPE(args[0]) != &ReportsType || !PyBytes_Check(args[2])) {
        PyErr_SetString(PyExc_TypeError,
                        "publish(reports: Reports, bus: int, topic: bytes, msg: int, token: int)");
        return NULL;
    }
    void *bus, *m;
    if (get_ptr(args[1], &bus) < 0 || get_ptr(args[3], &m) < 0)
        return NULL;
    unsigned long long token = PyLong_AsUnsignedLongLong(args[4]);
    if (token == (unsigned long long)-1 && PyErr_Occurred())
        return NULL;
    struct opaque *o = malloc(sizeof *o);
    if (!o)
        return PyLong_FromLong(ERR_NOMEM);
    o->q = ((Reports *)args[0])->q;
    o->token = token;
    const char *topic = PyBytes_AS_STRING(args[2]);
    msgbus_err_t e;
    Py_BEGIN_ALLOW_THREADS
    e = fn.publish(bus, topic, m, on_report, o);
    Py_END_ALLOW_THREADS
    if (e != 0)
        free(o); /* refused: the callback is never called */
    return PyLong_FromLong(e);
}

/* publish_payload(reports, bus, topic bytes, payload bytes, token, Bus,
 * topic str, pending dict) -> Delivery, or an error code. Bus.publish of
 * a payload alone: makes the message, its Delivery (registered in
 * pending[token] before the message goes, as the ctypes path does),
 * publishes and frees the message. On an error nothing is left behind
 * and libmsgbus's last error is still the publish's. */
static PyObject *do_publish(struct queue *q, void *bus, PyObject *tb, PyObject *payload,
                            PyObject *tokobj, PyObject *owner, PyObject *topic, PyObject *pending);

static PyObject *sp_publish_payload(PyObject *mod, PyObject *const *args, Py_ssize_t nargs)
{
    (void)mod;
    if (need_ready() < 0)
        return NULL;
    if (nargs != 8 || Py_TYPE(args[0]) != &ReportsType || !PyBytes_Check(args[2]) ||
        !PyBytes_Check(args[3]) || !PyDict_Check(args[7])) {
        PyErr_SetString(PyExc_TypeError,
                        "publish_payload(reports, bus: int, topic: bytes, payload: bytes, "
                        "token: int, owner: Bus, topic: str, pending: dict)");
        return NULL;
    }
    void *bus;
    if (get_ptr(args[1], &bus) < 0)
        return NULL;
    return do_publish(((Reports *)args[0])->q, bus, args[2], args[3], args[4], args[5], args[6],
                      args[7]);
}

static PyObject *do_publish(struct queue *q, void *bus, PyObject *tb, PyObject *payload,
                            PyObject *tokobj, PyObject *owner, PyObject *topic, PyObject *pending)
{
    unsigned long long token = PyLong_AsUnsignedLongLong(tokobj);
    if (token == (unsigned long long)-1 && PyErr_Occurred())
        return NULL;
    msgbus_msg_t *m = NULL;
    msgbus_err_t e = fn.msg_new(&m, PyBytes_AS_STRING(payload), (size_t)PyBytes_GET_SIZE(payload));
    if (e != 0)
        return PyLong_FromLong(e);
    const char *idc = fn.msg_id(m);
    PyObject *id = PyUnicode_DecodeUTF8(idc, (Py_ssize_t)strlen(idc), "surrogateescape");
    PyObject *d = id ? dlv_type->tp_alloc(dlv_type, 0) : NULL;
    struct opaque *o = NULL;
    if (!d)
        goto fail;
    PyObject *vals[DLV_SLOTS] = {owner, topic, id, Py_None, Py_None, Py_None, Py_None};
    for (int i = 0; i < DLV_SLOTS; i++)
        if (set_slot(d_dlv[i], d, vals[i]) < 0)
            goto fail;
    if (PyDict_SetItem(pending, tokobj, d) < 0)
        goto fail;
    o = malloc(sizeof *o);
    if (!o) {
        PyDict_DelItem(pending, tokobj);
        PyErr_NoMemory();
        goto fail;
    }
    o->q = q;
    o->token = token;
    const char *tname = PyBytes_AS_STRING(tb);
    Py_BEGIN_ALLOW_THREADS
    e = fn.publish(bus, tname, m, on_report, o);
    fn.msg_free(m);
    Py_END_ALLOW_THREADS
    Py_DECREF(id);
    if (e != 0) {
        free(o); /* refused: the callback is never called */
        /* the token is ours alone: nobody else removed it */
        if (PyDict_DelItem(pending, tokobj) < 0)
            PyErr_Clear();
        Py_DECREF(d);
        return PyLong_FromLong(e);
    }
    return d;
fail:
    Py_XDECREF(d);
    Py_XDECREF(id);
    fn.msg_free(m);
    return NULL;
}

/* ------------------------------------------------------------ Publisher */

/* A bus's publish: Bus.publish(topic, payload) with a str topic already
 * checked (in the topic cache), a bytes payload, no other argument and no
 * tracer runs here (do_publish); every other call goes to Bus.publish
 * itself, which checks and raises as always. Holds its bus weakly. */
typedef struct {
    PyObject_HEAD
    PyObject *bus_ref;  /* weakref to the Bus */
    PyObject *reports;  /* the bus's Reports */
    PyObject *func;     /* Bus.publish (the function) */
    PyObject *pending;  /* _core._pending */
    PyObject *topics;   /* _core._topics: str -> checked bytes */
    PyObject *ids;      /* _core._ids (itertools.count) */
    PyObject *globals;  /* _core's namespace (its _tracer) */
    vectorcallfunc vectorcall;
} Publisher;

static PyObject *s_ptr, *s_tracer;

static void Publisher_dealloc(Publisher *self)
{
    Py_XDECREF(self->bus_ref);
    Py_XDECREF(self->reports);
    Py_XDECREF(self->func);
    Py_XDECREF(self->pending);
    Py_XDECREF(self->topics);
    Py_XDECREF(self->ids);
    Py_XDECREF(self->globals);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyObject *Publisher_fallback(Publisher *self, PyObject *bus, PyObject *const *args,
                                   size_t nargsf, PyObject *kwnames)
{
    Py_ssize_t n = PyVectorcall_NARGS(nargsf);
    Py_ssize_t nk = kwnames ? PyTuple_GET_SIZE(kwnames) : 0;
    PyObject *small[8];
    PyObject **all = n + nk + 1 <= 8 ? small : PyMem_Malloc((size_t)(n + nk + 1) * sizeof(PyObject *));
    if (!all)
        return PyErr_NoMemory();
    all[0] = bus;
    for (Py_ssize_t i = 0; i < n + nk; i++)
        all[i + 1] = args[i];
    PyObject *r = PyObject_Vectorcall(self->func, all, (size_t)(n + 1), kwnames);
    if (all != small)
        PyMem_Free(all);
    return r;
}

static PyObject *Publisher_vectorcall(PyObject *callable, PyObject *const *args, size_t nargsf,
                                      PyObject *kwnames)
{
    Publisher *self = (Publisher *)callable;
    PyObject *bus = PyWeakref_GetObject(self->bus_ref); /* borrowed */
    if (!bus)
        return NULL;
    if (bus == Py_None) {
        PyErr_SetString(PyExc_ReferenceError, "publish: the bus is gone");
        return NULL;
    }
    Py_INCREF(bus);
    PyObject *r = NULL;
    PyObject *tb = NULL, *ptr = NULL;
    if (PyVectorcall_NARGS(nargsf) != 2 || (kwnames && PyTuple_GET_SIZE(kwnames)) ||
        !PyUnicode_CheckExact(args[0]) || !PyBytes_CheckExact(args[1]))
        goto slow;
    PyObject *tracer = PyDict_GetItemWithError(self->globals, s_tracer);
    if (tracer != Py_None)
        goto slow; /* also when missing or on error: the general path decides */
    tb = PyDict_GetItemWithError(self->topics, args[0]);
    if (!tb || !PyBytes_CheckExact(tb))
        goto slow;
    Py_INCREF(tb);
    ptr = PyObject_GetAttr(bus, s_ptr);
    if (!ptr || ptr == Py_None)
        goto slow;
    void *busp = PyLong_AsVoidPtr(ptr);
    if (!busp)
        goto slow;
    PyObject *tok = PyIter_Next(self->ids);
    if (!tok)
        goto done;
    r = do_publish(((Reports *)self->reports)->q, busp, tb, args[1], tok, bus, args[0],
                   self->pending);
    Py_DECREF(tok);
    if (r && PyLong_CheckExact(r)) {
        /* refused: Bus.publish's errors (check(rc), libmsgbus's last error
         * is still this publish's) */
        PyObject *check = PyDict_GetItemString(self->globals, "check");
        PyObject *x = check ? PyObject_CallOneArg(check, r) : NULL;
        Py_XDECREF(x);
        Py_CLEAR(r);
        if (!PyErr_Occurred())
            PyErr_SetString(PyExc_SystemError, "publish: refused without an error");
    }
    goto done;
slow:
    PyErr_Clear();
    r = Publisher_fallback(self, bus, args, nargsf, kwnames);
done:
    Py_XDECREF(tb);
    Py_XDECREF(ptr);
    Py_DECREF(bus);
    return r;
}

static PyObject *Publisher_call(PyObject *self, PyObject *args, PyObject *kw)
{
    return PyVectorcall_Call(self, args, kw);
}

static PyObject *Publisher_doc(Publisher *self, void *c)
{
    (void)c;
    return PyObject_GetAttrString(self->func, "__doc__");
}

static PyObject *Publisher_wrapped(Publisher *self, void *c)
{
    (void)c;
    PyObject *bus = PyWeakref_GetObject(self->bus_ref);
    if (!bus)
        return NULL;
    if (bus == Py_None)
        Py_RETURN_NONE;
    return PyMethod_New(self->func, bus);
}

static PyGetSetDef Publisher_getset[] = {
    {"__doc__", (getter)Publisher_doc, NULL, NULL, NULL},
    {"__wrapped__", (getter)Publisher_wrapped, NULL, NULL, NULL},
    {NULL, NULL, NULL, NULL, NULL}};

static PyTypeObject PublisherType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "msgbus._speedups.Publisher",
    .tp_basicsize = sizeof(Publisher),
    .tp_dealloc = (destructor)Publisher_dealloc,
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_VECTORCALL,
    .tp_vectorcall_offset = offsetof(Publisher, vectorcall),
    .tp_call = Publisher_call,
    .tp_getset = Publisher_getset,
};

/* publisher(bus, reports, Bus.publish, pending, topics, ids, globals) */
static PyObject *sp_publisher(PyObject *mod, PyObject *const *args, Py_ssize_t nargs)
{
    (void)mod;
    if (need_ready() < 0)
        return NULL;
    if (nargs != 7 || Py_TYPE(args[1]) != &ReportsType || !PyDict_Check(args[3]) ||
        !PyDict_Check(args[4]) || !PyIter_Check(args[5]) || !PyDict_Check(args[6])) {
        PyErr_SetString(PyExc_TypeError, "publisher(bus, reports, publish, pending: dict, "
                                         "topics: dict, ids: iterator, globals: dict)");
        return NULL;
    }
    Publisher *self = PyObject_New(Publisher, &PublisherType);
    if (!self)
        return NULL;
    self->bus_ref = PyWeakref_NewRef(args[0], NULL);
    if (!self->bus_ref) {
        self->reports = self->func = self->pending = self->topics = self->ids = self->globals =
            NULL;
        Py_DECREF(self);
        return NULL;
    }
    PyObject **dst[] = {&self->reports, &self->func, &self->pending, &self->topics, &self->ids,
                        &self->globals};
    for (int i = 0; i < 6; i++) {
        Py_INCREF(args[i + 1]);
        *dst[i] = args[i + 1];
    }
    self->vectorcall = Publisher_vectorcall;
    return (PyObject *)self;
}

/* ------------------------------------------------------------ Message methods */

static PyObject *s_reg, *s_ack_py, *s_del_py;
static PyObject *d_reg;
static PyObject *check_fn;

/* Message.ack with the compiled paths: the common case (not settled, no
 * span, not released) here; everything else in Message._ack_py. */
static PyObject *msg_ack(PyObject *self, PyObject *unused)
{
    (void)unused;
    PyObject *ptr = get_slot(d_ptr, self);
    PyObject *settled = ptr ? get_slot(d_settled, self) : NULL;
    PyObject *span = settled ? get_slot(d_span, self) : NULL;
    int fast = span && ptr != Py_None && settled == Py_False && span == Py_None;
    void *p = fast ? PyLong_AsVoidPtr(ptr) : NULL;
    Py_XDECREF(ptr);
    Py_XDECREF(settled);
    Py_XDECREF(span);
    if (!p) {
        PyErr_Clear();
        return PyObject_CallMethodNoArgs(self, s_ack_py);
    }
    msgbus_err_t e;
    Py_BEGIN_ALLOW_THREADS
    e = fn.ack(p);
    Py_END_ALLOW_THREADS
    if (e != 0) {
        PyObject *rc = PyLong_FromLong(e);
        PyObject *x = rc ? PyObject_CallOneArg(check_fn, rc) : NULL;
        Py_XDECREF(rc);
        Py_XDECREF(x);
        if (!PyErr_Occurred())
            PyErr_SetString(PyExc_SystemError, "ack: failed without an error");
        return NULL;
    }
    if (set_slot(d_settled, self, Py_True) < 0)
        return NULL;
    Py_RETURN_NONE;
}

/* Message.__del__ with the compiled paths: leaves its bus's registry,
 * frees the C message; a tracer's span still open goes to _del_py. */
static PyObject *msg_del(PyObject *self, PyObject *unused)
{
    (void)unused;
    PyObject *exc_type, *exc_val, *exc_tb;
    PyErr_Fetch(&exc_type, &exc_val, &exc_tb);
    PyObject *reg = get_slot(d_reg, self);
    if (reg && PyDict_CheckExact(reg)) {
        PyObject *key = PyLong_FromVoidPtr(self);
        if (!key || PyDict_DelItem(reg, key) < 0)
            PyErr_Clear();
        Py_XDECREF(key);
    }
    Py_XDECREF(reg);
    PyErr_Clear();
    PyObject *ptr = get_slot(d_ptr, self);
    if (ptr && ptr != Py_None) {
        void *p = PyLong_AsVoidPtr(ptr);
        set_slot(d_ptr, self, Py_None);
        if (p) {
            Py_BEGIN_ALLOW_THREADS
            fn.msg_free(p);
            Py_END_ALLOW_THREADS
        }
    }
    Py_XDECREF(ptr);
    PyErr_Clear();
    PyObject *span = get_slot(d_span, self);
    if (span && span != Py_None) {
        PyObject *x = PyObject_CallMethodNoArgs(self, s_del_py);
        Py_XDECREF(x);
    }
    Py_XDECREF(span);
    PyErr_Clear();
    PyErr_Restore(exc_type, exc_val, exc_tb);
    Py_RETURN_NONE;
}

static PyMethodDef msg_ack_def = {
    "ack", msg_ack, METH_NOARGS,
    "Done: never deliver it again. Never blocks on the network.\n"
    ":class:`StateError` if already settled; :class:`ClosedError` if its\n"
    "subscription or bus is closed (the broker delivers it again)."};
static PyMethodDef msg_del_def = {"__del__", msg_del, METH_NOARGS, NULL};

/* message_methods(Message, check) -> (ack, __del__): method descriptors
 * for Message (the caller installs them). */
static PyObject *sp_message_methods(PyObject *mod, PyObject *const *args, Py_ssize_t nargs)
{
    (void)mod;
    if (need_ready() < 0)
        return NULL;
    if (nargs != 2 || (PyTypeObject *)args[0] != msg_type || !PyCallable_Check(args[1])) {
        PyErr_SetString(PyExc_TypeError, "message_methods(Message, check)");
        return NULL;
    }
    PyObject *reg = PyObject_GetAttrString(args[0], "_reg");
    if (!reg)
        return NULL;
    Py_XSETREF(d_reg, reg);
    Py_INCREF(args[1]);
    Py_XSETREF(check_fn, args[1]);
    PyObject *a = PyDescr_NewMethod(msg_type, &msg_ack_def);
    PyObject *d = a ? PyDescr_NewMethod(msg_type, &msg_del_def) : NULL;
    if (!d) {
        Py_XDECREF(a);
        return NULL;
    }
    return Py_BuildValue("(NN)", a, d);
}

/* poll(bus, timeout_ms) -> (error code, served) */
static PyObject *sp_poll(PyObject *mod, PyObject *const *args, Py_ssize_t nargs)
{
    (void)mod;
    if (need_ready() < 0)
        return NULL;
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "poll(bus: int, timeout_ms: int)");
        return NULL;
    }
    void *bus;
    if (get_ptr(args[0], &bus) < 0)
        return NULL;
    long ms = PyLong_AsLong(args[1]);
    if (ms == -1 && PyErr_Occurred())
        return NULL;
    int served = 0;
    msgbus_err_t e;
    Py_BEGIN_ALLOW_THREADS
    serving = 1;
    e = fn.poll(bus, (int)ms, &served);
    serving = 0;
    Py_END_ALLOW_THREADS
    return Py_BuildValue("(ii)", e, served);
}

/* flush(bus, timeout_ms) -> (error code, failed) */
static PyObject *sp_flush(PyObject *mod, PyObject *const *args, Py_ssize_t nargs)
{
    (void)mod;
    if (need_ready() < 0)
        return NULL;
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "flush(bus: int, timeout_ms: int)");
        return NULL;
    }
    void *bus;
    if (get_ptr(args[0], &bus) < 0)
        return NULL;
    long ms = PyLong_AsLong(args[1]);
    if (ms == -1 && PyErr_Occurred())
        return NULL;
    size_t failed = 0;
    msgbus_err_t e;
    Py_BEGIN_ALLOW_THREADS
    serving = 1;
    e = fn.flush(bus, (int)ms, &failed);
    serving = 0;
    Py_END_ALLOW_THREADS
    return Py_BuildValue("(in)", e, (Py_ssize_t)failed);
}

/* Makes a Message for the received C message m (ours from now on): its
 * _ptr, _settled, _span, payload and id slots set, the other fields left
 * unset (read when first asked for, Message.__getattr__). */
static PyObject *make_message(msgbus_msg_t *m)
{
    PyObject *o = msg_type->tp_alloc(msg_type, 0);
    if (!o)
        return NULL;
    size_t n = 0;
    const void *p = fn.msg_payload(m, &n);
    PyObject *pl = PyBytes_FromStringAndSize(n ? p : "", (Py_ssize_t)n);
    PyObject *ptr = PyLong_FromVoidPtr(m);
    const char *idc = fn.msg_id(m);
    PyObject *id = idc ? PyUnicode_DecodeUTF8(idc, (Py_ssize_t)strlen(idc), "surrogateescape")
                       : (Py_INCREF(Py_None), Py_None);
    int bad = !pl || !ptr || !id;
    if (!bad)
        bad = set_slot(d_ptr, o, ptr) < 0 || set_slot(d_settled, o, Py_False) < 0 ||
              set_slot(d_span, o, Py_None) < 0 || set_slot(d_payload, o, pl) < 0 ||
              set_slot(d_id, o, id) < 0;
    Py_XDECREF(pl);
    Py_XDECREF(ptr);
    Py_XDECREF(id);
    if (bad) {
        /* Its _ptr may be set: its __del__ would free m, which the
         * caller frees. */
        PyObject *none = Py_None;
        set_slot(d_ptr, o, none);
        Py_DECREF(o);
        return NULL;
    }
    return o;
}

/* take(sub, max, timeout_ms) -> list of Message (possibly empty on a
 * timeout), or an int error code. Waits without the GIL only when nothing
 * is there yet. */
#define TAKE_MAX 1024
static PyObject *sp_take(PyObject *mod, PyObject *const *args, Py_ssize_t nargs)
{
    (void)mod;
    if (need_ready() < 0)
        return NULL;
    if (nargs != 4 || (args[3] != Py_None && !PyDict_CheckExact(args[3]))) {
        PyErr_SetString(PyExc_TypeError, "take(sub: int, max: int, timeout_ms: int, reg)");
        return NULL;
    }
    PyObject *reg = args[3] == Py_None ? NULL : args[3];
    void *sub;
    if (get_ptr(args[0], &sub) < 0)
        return NULL;
    Py_ssize_t max = PyLong_AsSsize_t(args[1]);
    if (max == -1 && PyErr_Occurred())
        return NULL;
    long ms = PyLong_AsLong(args[2]);
    if (ms == -1 && PyErr_Occurred())
        return NULL;
    if (max < 1)
        max = 1;
    if (max > TAKE_MAX)
        max = TAKE_MAX;
    msgbus_msg_t *arr[TAKE_MAX];
    size_t n = 0;
    msgbus_err_t e;
    Py_BEGIN_ALLOW_THREADS
    e = fn.receive_batch(sub, (size_t)max, (int)ms, arr, &n);
    Py_END_ALLOW_THREADS
    if (e == ERR_TIMEOUT)
        return PyList_New(0);
    if (e != 0)
        return PyLong_FromLong(e);
    PyObject *list = PyList_New((Py_ssize_t)n);
    if (!list)
        goto fail;
    for (size_t i = 0; i < n; i++) {
        PyObject *o = make_message(arr[i]);
        if (o && reg) {
            /* the bus's registry of live messages (Bus.close releases
             * them): id -> weakref; the message leaves it in __del__ */
            PyObject *key = PyLong_FromVoidPtr(o);
            PyObject *ref = key ? PyWeakref_NewRef(o, NULL) : NULL;
            if (!ref || PyDict_SetItem(reg, key, ref) < 0 || set_slot(d_reg, o, reg) < 0)
                Py_CLEAR(o); /* its __del__ frees arr[i]: do not free it again */
            Py_XDECREF(key);
            Py_XDECREF(ref);
            if (!o) {
                Py_CLEAR(list);
                for (size_t j = i + 1; j < n; j++)
                    fn.msg_free(arr[j]);
                return NULL;
            }
        }
        if (!o) {
            Py_CLEAR(list);
            /* the ones made own theirs (freed with the list); free the rest */
            for (size_t j = i; j < n; j++)
                fn.msg_free(arr[j]);
            return NULL;
        }
        PyList_SET_ITEM(list, (Py_ssize_t)i, o);
    }
    return list;
fail:
    for (size_t j = 0; j < n; j++)
        fn.msg_free(arr[j]);
    return NULL;
}

static PyMethodDef methods[] = {
    {"init", (PyCFunction)(void (*)(void))sp_init, METH_FASTCALL,
     "init(addresses, Message): the libmsgbus functions to call and the class to make."},
    {"msg_new", sp_msg_new, METH_O, "msg_new(payload: bytes) -> address, or -error code"},
    {"msg_id", sp_msg_id, METH_O, "msg_id(msg) -> str or None"},
    {"msg_free", sp_msg_free, METH_O, "msg_free(msg)"},
    {"ack", sp_ack, METH_O, "ack(msg) -> error code"},
    {"publish", (PyCFunction)(void (*)(void))sp_publish, METH_FASTCALL,
     "publish(reports, bus, topic, msg, token) -> error code"},
    {"publish_payload", (PyCFunction)(void (*)(void))sp_publish_payload, METH_FASTCALL,
     "publish_payload(reports, bus, topic, payload, token, owner, topic, pending) -> "
     "Delivery or error code"},
    {"publisher", (PyCFunction)(void (*)(void))sp_publisher, METH_FASTCALL,
     "publisher(bus, reports, publish, pending, topics, ids, globals) -> a compiled bus.publish"},
    {"message_methods", (PyCFunction)(void (*)(void))sp_message_methods, METH_FASTCALL,
     "message_methods(Message, check) -> (ack, __del__) method descriptors"},
    {"poll", (PyCFunction)(void (*)(void))sp_poll, METH_FASTCALL,
     "poll(bus, timeout_ms) -> (error code, served)"},
    {"flush", (PyCFunction)(void (*)(void))sp_flush, METH_FASTCALL,
     "flush(bus, timeout_ms) -> (error code, failed)"},
    {"take", (PyCFunction)(void (*)(void))sp_take, METH_FASTCALL,
     "take(sub, max, timeout_ms) -> [Message] or error code"},
    {NULL, NULL, 0, NULL}};

static struct PyModuleDef moddef = {PyModuleDef_HEAD_INIT, "msgbus._speedups",
                                    "The binding's hot paths in C (optional).", -1, methods,
                                    NULL, NULL, NULL, NULL};

PyMODINIT_FUNC PyInit__speedups(void)
{
    if (PyType_Ready(&ReportsType) < 0 || PyType_Ready(&PublisherType) < 0)
        return NULL;
    s_ptr = PyUnicode_InternFromString("_ptr");
    s_tracer = PyUnicode_InternFromString("_tracer");
    s_reg = PyUnicode_InternFromString("_reg");
    s_ack_py = PyUnicode_InternFromString("_ack_py");
    s_del_py = PyUnicode_InternFromString("_del_py");
    if (!s_ptr || !s_tracer || !s_reg || !s_ack_py || !s_del_py)
        return NULL;
    PyObject *m = PyModule_Create(&moddef);
    if (!m)
        return NULL;
    Py_INCREF(&ReportsType);
    if (PyModule_AddObject(m, "Reports", (PyObject *)&ReportsType) < 0) {
        Py_DECREF(&ReportsType);
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
