/*
 * _fastscan: the compiled block scanner of kvmtrace's text importer (see decode.py).
 *
 * scan(buf, start, status, line_ts, line_cpu, starts, rows, ignored, comm_ids, comm_names,
 *      classify, final)
 *
 * For the lines of `buf` from offset `start` (complete lines; with `final` also a last line
 * without newline), as many as the output arrays hold, in every line shape of lines.py but
 * perf-prof's dated one (ftrace with or without TGID and flags, trace-cmd with or without
 * instance and -l, perf script with any field set), it writes a status (decode.py: BLANK,
 * ROWS, IGNORED, DEFER), and for event lines the timestamp and cpu; it decodes the common
 * printed forms of the model tracepoints into `rows` (int64, NFIELDS x capacity, the layout
 * of decode.ROW_FIELDS).  Whatever it is not sure of - headers, lost markers, quotes, non-ASCII
 * or control bytes, raw-field and plugin forms, kprobes, joined lines, numbers that do not fit
 * their column - it leaves to the Python decoder as DEFER, which handles every form.  It
 * never accepts a line the Python decoder would refuse, and decodes what it accepts to the
 * same values (the tests compare both on every fixture).
 *
 * Event names are classified by Python (`classify(name) -> int`), cached here: 0 ignore,
 * 1 defer, 2 ignore unless the body starts with "(" (an ftrace kprobe), >= 10 a decoder below.
 *
 * Returns (lines scanned, offset after them, rows written, kvm_exit lines with reason INVLPG).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

enum { BLANK = 0, ROWS = 1, IGNORED = 2, DEFER = 3 };
enum { F_KEY, F_TS, F_CPU, F_TID, F_TGID, F_COMM, F_KIND, F_VCPU, F_GFN, F_ROLE, F_LEVEL,
       F_ROOT, F_UNSYNC, F_CREATED, F_NEED, F_VALUE, NFIELDS };
enum { C_IGNORE = 0, C_DEFER = 1, C_KPROBE = 2,
       D_PV_FLUSH = 10, D_SP_GET, D_SP_UNSYNC, D_SP_SYNC, D_SP_ZAP, D_ENTRY, D_EXIT, D_SET_SPTE,
       D_ELEMENT, D_WALK, D_EMULATE, D_PIO, D_MMIO, D_HYPERCALL, D_USER_EXIT, D_PAGE_FAULT };
/* schema.Kind codes */
enum { K_FLUSH_PV = 1, K_FLUSH_GUEST = 2, K_SP_GET = 20, K_SP_UNSYNC = 21, K_SP_SYNC = 22,
       K_SP_ZAP = 23, K_WALK_ELEMENT = 24, K_ENTRY = 30, K_EXIT = 31, K_SPTE = 32,
       K_EMULATE = 33, K_PIO = 34, K_MMIO = 35, K_HYPERCALL = 36, K_USER_EXIT = 37,
       K_PAGE_FAULT = 38, K_WALK_START = 39 };

#define MAX_LINE 4096
#define I32MAX 2147483647LL
#define I8MAX 127

typedef struct { const char *p, *e; } span;

static inline int is_ws(char c) { return c == ' ' || c == '\t'; }
static inline int is_dig(char c) { return c >= '0' && c <= '9'; }
static inline int is_hex(char c) { return is_dig(c) || (c >= 'a' && c <= 'f'); }
static inline int is_word(char c) {
    return is_dig(c) || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_';
}
static inline int is_name(char c) { return is_word(c) || c == '.' || c == '$' || c == '-'; }

static inline int lit(const char **p, const char *e, const char *s) {
    size_t n = strlen(s);
    if ((size_t)(e - *p) < n || memcmp(*p, s, n) != 0) return 0;
    *p += n;
    return 1;
}

/* Decimal digits (1..maxd) into *v; 0 when none or too many or overflow past limit. */
static inline int dec(const char **p, const char *e, int maxd, long long limit, long long *v) {
    const char *q = *p;
    long long x = 0;
    int n = 0;
    while (q < e && is_dig(*q)) {
        if (++n > maxd) return 0;
        x = x * 10 + (*q - '0');
        if (x > limit) return 0;
        q++;
    }
    if (!n) return 0;
    *p = q; *v = x;
    return 1;
}

/* Hex digits ([0-9a-f], at most maxd of them, or 16 significant) into an unsigned value. */
static inline int hex(const char **p, const char *e, int maxd, unsigned long long *v) {
    const char *q = *p;
    unsigned long long x = 0;
    int n = 0, sig = 0;
    while (q < e && is_hex(*q)) {
        int d = is_dig(*q) ? *q - '0' : *q - 'a' + 10;
        if (++n > maxd) return 0;
        if (sig || d) sig++;
        if (sig > 16) return 0;
        x = (x << 4) | (unsigned)d;
        q++;
    }
    if (!n) return 0;
    *p = q; *v = x;
    return 1;
}

static inline long long s64(unsigned long long v) { return (long long)v; }

/* ------------------------------------------------------------------ rows */

typedef struct {
    int64_t *rows;
    Py_ssize_t cap, n;
    long long key, ts, cpu, tid, tgid, comm;
} out_t;

static inline int emit(out_t *o, int sub, long long kind, long long vcpu, long long gfn,
                       long long role, long long level, long long root, long long unsync,
                       long long created, long long need, long long value) {
    if (o->n >= o->cap) return 0;
    int64_t *r = o->rows;
    Py_ssize_t i = o->n++, c = o->cap;
    r[F_KEY * c + i] = o->key + sub; r[F_TS * c + i] = o->ts; r[F_CPU * c + i] = o->cpu;
    r[F_TID * c + i] = o->tid; r[F_TGID * c + i] = o->tgid; r[F_COMM * c + i] = o->comm;
    r[F_KIND * c + i] = kind; r[F_VCPU * c + i] = vcpu; r[F_GFN * c + i] = gfn;
    r[F_ROLE * c + i] = role; r[F_LEVEL * c + i] = level; r[F_ROOT * c + i] = root;
    r[F_UNSYNC * c + i] = unsync; r[F_CREATED * c + i] = created; r[F_NEED * c + i] = need;
    r[F_VALUE * c + i] = value;
    return 1;
}

/* ------------------------------------------------------------------ payload decoders
 * Each mirrors the Python printed-form decoder named in its comment (payloads.py,
 * sp_text.py); the body is already stripped.  Return the rows emitted, 0 = defer. */

/* _PV_FLUSH: "vcpu %u need_flush_tlb (true|false|1|0)" exactly */
static int d_pv_flush(out_t *o, const char *p, const char *e) {
    long long vcpu, need;
    if (!lit(&p, e, "vcpu ") || !dec(&p, e, 20, I32MAX, &vcpu) || !lit(&p, e, " need_flush_tlb "))
        return 0;
    if (lit(&p, e, "true") || lit(&p, e, "1")) need = 1;
    else if (lit(&p, e, "false") || lit(&p, e, "0")) need = 0;
    else return 0;
    if (p != e) return 0;
    return emit(o, 1, K_FLUSH_PV, vcpu, -1, -1, -1, -1, -1, -1, need, 0);
}

/* sp_text.KERNEL_SP, 4.x+ forms only ("l%u %u-byte") */
static int d_sp(out_t *o, const char *p, const char *e, int kind) {
    unsigned long long gfn;
    long long level, q, root, created = -1;
    long long role;
    int four;
    if (!lit(&p, e, "sp ")) return 0;
    if (lit(&p, e, "gen ")) {
        const char *w = p;
        while (p < e && is_word(*p)) p++;
        if (p == w || !lit(&p, e, " ")) return 0;
    }
    if (!lit(&p, e, "gfn ") || !hex(&p, e, 64, &gfn) || gfn >> 63) return 0;
    if (!lit(&p, e, " l") || !dec(&p, e, 2, 15, &level)) return 0;
    if (lit(&p, e, " 4-byte")) four = 1;
    else if (lit(&p, e, " 8-byte")) four = 0;
    else return 0;
    if (!lit(&p, e, " q") || p >= e || !is_dig(*p)) return 0;
    q = *p++ - '0';
    role = level | (four ? 1 << 4 : 0) | (q << 5);
    if (lit(&p, e, " direct")) role |= 1 << 7;
    if (!lit(&p, e, " ") || e - p < 3) return 0;
    {
        int acc = 0;
        if (p[0] == 'w') acc |= 2; else if (p[0] != '-') return 0;
        if (p[1] == 'u') acc |= 4; else if (p[1] != '-') return 0;
        if (p[2] == 'x') acc |= 1; else if (p[2] != '-') return 0;
        role |= (long long)acc << 8;
        p += 3;
    }
    if (lit(&p, e, " invalid")) role |= 1 << 11;
    if (!lit(&p, e, " ")) return 0;
    if (lit(&p, e, "!nxe")) ;
    else if (lit(&p, e, "nxe")) role |= 1 << 12;
    else return 0;
    if (lit(&p, e, " !ad")) role |= 1 << 16;
    else lit(&p, e, " ad");
    if (!lit(&p, e, " root ") || !dec(&p, e, 20, I32MAX, &root) || !lit(&p, e, " ")) return 0;
    long long unsync;
    if (lit(&p, e, "unsync")) unsync = 1;
    else if (lit(&p, e, "sync")) unsync = 0;
    else return 0;
    if (lit(&p, e, " new")) created = 1;
    else if (lit(&p, e, " existing")) created = 0;
    if (p != e) return 0;
    return emit(o, 1, kind, -1, (long long)gfn, role, role & 0xF, root, unsync, created, -1, 0);
}

/* _ENTRY: "\s*vcpu (\d+)(?:,? rip 0x([0-9a-f]+))?" as a prefix */
static int d_entry(out_t *o, const char *p, const char *e) {
    long long vcpu;
    unsigned long long rip = 0;
    if (!lit(&p, e, "vcpu ") || !dec(&p, e, 20, I32MAX, &vcpu)) return 0;
    if (p < e && is_dig(*p)) return 0;
    const char *q = p;
    if (q < e && *q == ',') q++;
    if (lit(&q, e, " rip 0x") && q < e && is_hex(*q)) {
        if (!hex(&q, e, 64, &rip)) return 0;
    }
    return emit(o, 1, K_ENTRY, vcpu, -1, -1, -1, -1, -1, -1, -1, s64(rip));
}

/* _EXIT + _REQUESTS: "(?:vcpu (\d+) )?reason " then the first " requests 0x<hex>" */
static int d_exit(out_t *o, const char *p, const char *e, long long *invlpg) {
    long long vcpu = -1;
    if (lit(&p, e, "vcpu ")) {
        if (!dec(&p, e, 20, I32MAX, &vcpu) || !lit(&p, e, " ")) return 0;
    }
    if (!lit(&p, e, "reason ")) return 0;
    {   /* INVLPG / INVPCID exits are guest flushes (payloads._exit_flush): Python */
        const char *r = p;
        if (lit(&r, e, "INVLPG") || lit(&r, e, "invlpg") || lit(&r, e, "INVPCID")
            || lit(&r, e, "invpcid"))
            return 0;
    }
    (void)invlpg;
    const char *q = p;
    for (;;) {
        const char *hit = NULL;
        for (const char *s = q; s + 12 <= e; s++) {
            if (s[0] == ' ' && memcmp(s, " requests 0x", 12) == 0) { hit = s; break; }
        }
        if (!hit) {
            return emit(o, 1, K_EXIT, vcpu, -1, -1, -1, -1, -1, -1, -1, -1);
        }
        const char *h = hit + 12;
        if (h < e && is_hex(*h)) {
            unsigned long long req;
            if (!hex(&h, e, 64, &req)) return 0;
            if (!emit(o, 1, K_EXIT, vcpu, -1, -1, -1, -1, -1, -1, -1, s64(req))) return 0;
            if (req >> 35 & 1) {
                if (!emit(o, 2, K_FLUSH_GUEST, vcpu, -1, -1, -1, -1, -1, -1, -1, s64(req))) {
                    o->n--;
                    return 0;
                }
                return 2;
            }
            return 1;
        }
        q = hit + 1;
    }
}

/* _SET_SPTE: "gfn %llx spte %llx (%s) level %u[ at %llx]" exactly */
static int d_set_spte(out_t *o, const char *p, const char *e) {
    unsigned long long gfn, spte, at;
    long long level;
    if (!lit(&p, e, "gfn ") || !hex(&p, e, 16, &gfn) || gfn >> 63) return 0;
    if (!lit(&p, e, " spte ") || !hex(&p, e, 16, &spte) || !lit(&p, e, " (")) return 0;
    int n = 0;
    while (p < e && *p != ')' && *p != '(') { if (++n > 16) return 0; p++; }
    if (!lit(&p, e, ") level ") || !dec(&p, e, 3, I8MAX, &level)) return 0;
    if (lit(&p, e, " at ")) { if (!hex(&p, e, 16, &at)) return 0; }
    if (p != e) return 0;
    return emit(o, 1, K_SPTE, -1, (long long)gfn, -1, level, -1, -1, -1, -1, s64(spte));
}

/* _PAGING_ELEMENT: "pte %llx level %u" exactly */
static int d_element(out_t *o, const char *p, const char *e) {
    unsigned long long pte;
    long long level;
    if (!lit(&p, e, "pte ") || !hex(&p, e, 16, &pte) || !lit(&p, e, " level ")
        || !dec(&p, e, 3, I8MAX, &level) || p != e)
        return 0;
    return emit(o, 1, K_WALK_ELEMENT, -1, -1, -1, level, -1, -1, -1, -1, s64(pte));
}

static int simple(out_t *o, int kind, long long vcpu, const char *p, const char *e) {
    unsigned long long v;
    if (!hex(&p, e, 64, &v)) return 0;
    return emit(o, 1, kind, vcpu, -1, -1, -1, -1, -1, -1, -1, s64(v));
}

/* _simple("addr (?P<v>[0-9a-f]+)") */
static int d_walk(out_t *o, const char *p, const char *e) {
    if (!lit(&p, e, "addr ")) return 0;
    return simple(o, K_WALK_START, -1, p, e);
}

/* payloads._emulate_printed: "csbase:rip:insn bytes (mode)"; an instruction that may be a
 * guest flush (0f after at most 5 legacy/REX prefixes: MOV to CR, INVLPG, INVPCID;
 * payloads.insn_flush) is left to Python, anything else is _simple's (EMULATE, rip). */
static int d_emulate(out_t *o, const char *p, const char *e) {
    const char *q = p;
    while (q < e && is_hex(*q)) q++;
    if (q == p || !lit(&q, e, ":")) return 0;
    const char *r = q;
    unsigned long long rip;
    if (!hex(&r, e, 64, &rip)) return 0;
    if (r < e && *r == ':') {
        r++;
        int nb = 0, k = 0;
        unsigned char b[6];
        while (nb < 6 && r + 1 < e && is_hex(r[0]) && is_hex(r[1])) {
            b[nb++] = (unsigned char)(((is_dig(r[0]) ? r[0] - '0' : r[0] - 'a' + 10) << 4)
                                      | (is_dig(r[1]) ? r[1] - '0' : r[1] - 'a' + 10));
            r += 2;
            if (r < e && *r == ' ') r++;
        }
        while (k < nb && k < 5 && (b[k] == 0x66 || b[k] == 0x67 || b[k] == 0xf2 || b[k] == 0xf3
                                   || b[k] == 0x2e || b[k] == 0x36 || b[k] == 0x3e
                                   || b[k] == 0x26 || b[k] == 0x64 || b[k] == 0x65
                                   || (b[k] >= 0x40 && b[k] <= 0x4f)))
            k++;
        if (k < nb && b[k] == 0x0f) return 0;
    }
    return simple(o, K_EMULATE, -1, q, e);
}

/* _simple("pio_(?:read|write) at 0x(?P<v>[0-9a-f]+)") */
static int d_pio(out_t *o, const char *p, const char *e) {
    if (!lit(&p, e, "pio_")) return 0;
    if (!lit(&p, e, "read") && !lit(&p, e, "write")) return 0;
    if (!lit(&p, e, " at 0x")) return 0;
    return simple(o, K_PIO, -1, p, e);
}

/* _simple("mmio \S+ len \d+ gpa 0x(?P<v>[0-9a-f]+)") */
static int d_mmio(out_t *o, const char *p, const char *e) {
    long long len;
    if (!lit(&p, e, "mmio ")) return 0;
    const char *q = p;
    while (q < e && !is_ws(*q)) q++;
    if (q == p) return 0;
    if (!lit(&q, e, " len ") || !dec(&q, e, 18, 0x7fffffffffffffffLL, &len)) return 0;
    if (q < e && is_dig(*q)) return 0;
    if (!lit(&q, e, " gpa 0x")) return 0;
    return simple(o, K_MMIO, -1, q, e);
}

/* _simple("nr 0x(?P<v>[0-9a-f]+)") */
static int d_hypercall(out_t *o, const char *p, const char *e) {
    if (!lit(&p, e, "nr 0x")) return 0;
    return simple(o, K_HYPERCALL, -1, p, e);
}

/* _USER_EXIT: "reason (\S+) \((-?\d+)\)" */
static int d_user_exit(out_t *o, const char *p, const char *e) {
    if (!lit(&p, e, "reason ")) return 0;
    const char *w = p;
    while (p < e && !is_ws(*p)) p++;
    if (p == w) return 0;
    int neg_reason = (p - w == 7 && memcmp(w, "restart", 7) == 0) ||
                     (p - w == 5 && memcmp(w, "error", 5) == 0);
    if (!lit(&p, e, " (")) return 0;
    int minus = lit(&p, e, "-");
    long long n;
    if (!dec(&p, e, 18, 0x7fffffffffffffffLL, &n) || !lit(&p, e, ")")) return 0;
    if (minus) n = -n;
    return emit(o, 1, K_USER_EXIT, -1, -1, -1, -1, -1, -1, -1, -1, neg_reason ? -n : n);
}

/* _simple("(?:vcpu (?P<c>\d+) rip 0x[0-9a-f]+ )?address (?:0x)?(?P<v>[0-9a-f]+)") */
static int d_page_fault(out_t *o, const char *p, const char *e) {
    long long vcpu = -1;
    if (lit(&p, e, "vcpu ")) {
        if (!dec(&p, e, 20, I32MAX, &vcpu) || !lit(&p, e, " rip 0x")) return 0;
        const char *q = p;
        while (p < e && is_hex(*p)) p++;
        if (p == q || !lit(&p, e, " ")) return 0;
    }
    if (!lit(&p, e, "address ")) return 0;
    if (e - p >= 3 && p[0] == '0' && p[1] == 'x' && is_hex(p[2])) p += 2;
    return simple(o, K_PAGE_FAULT, vcpu, p, e);
}

/* payloads.JOINED: "\[[0-9]{1,6}\][ \t]" or "[0-9]\.[0-9]{6,9}:[ \t]" anywhere */
static int joined(const char *p, const char *e) {
    for (const char *s = p; s < e; s++) {
        if (*s == '[') {
            const char *q = s + 1;
            int n = 0;
            while (q < e && is_dig(*q)) { q++; n++; }
            if (n >= 1 && n <= 6 && q + 1 < e && *q == ']' && is_ws(q[1])) return 1;
        } else if (*s == '.' && s > p && is_dig(s[-1])) {
            const char *q = s + 1;
            int n = 0;
            while (q < e && is_dig(*q)) { q++; n++; }
            if (n >= 6 && n <= 9 && q + 1 < e && *q == ':' && is_ws(q[1])) return 1;
        }
    }
    return 0;
}

/* ------------------------------------------------------------------ event-name cache */

#define NCACHE 512
#define NAMELEN 96
typedef struct { int used; int len; int cls; long long count; char name[NAMELEN]; } cls_entry;
static cls_entry cache[NCACHE];

static cls_entry *last_cls;

static cls_entry *classify(const char *p, int len, PyObject *fn, int *err) {
    cls_entry *l = last_cls;                        /* runs of one event are common */
    if (l && l->len == len && memcmp(l->name, p, len) == 0) return l;
    unsigned h = 2166136261u;
    for (int i = 0; i < len; i++) h = (h ^ (unsigned char)p[i]) * 16777619u;
    for (int k = 0; k < NCACHE; k++) {
        cls_entry *c = &cache[(h + k) & (NCACHE - 1)];
        if (c->used && c->len == len && memcmp(c->name, p, len) == 0) return last_cls = c;
        if (!c->used) {
            PyObject *r = PyObject_CallFunction(fn, "s#", p, (Py_ssize_t)len);
            if (!r) { *err = 1; return NULL; }
            long v = PyLong_AsLong(r);
            Py_DECREF(r);
            if (v == -1 && PyErr_Occurred()) { *err = 1; return NULL; }
            c->used = 1; c->len = len; c->cls = (int)v; c->count = 0;
            memcpy(c->name, p, len);
            return last_cls = c;
        }
    }
    return NULL;                                    /* table full: defer */
}

static int flush_counts(PyObject *ignored) {
    for (int k = 0; k < NCACHE; k++) {
        cls_entry *c = &cache[k];
        if (!c->used || !c->count) continue;
        PyObject *key = PyUnicode_DecodeASCII(c->name, c->len, "strict");
        if (!key) return -1;
        PyObject *old = PyDict_GetItemWithError(ignored, key);
        long long base = 0;
        if (old) base = PyLong_AsLongLong(old);
        else if (PyErr_Occurred()) { Py_DECREF(key); return -1; }
        PyObject *val = PyLong_FromLongLong(base + c->count);
        int rc = val ? PyDict_SetItem(ignored, key, val) : -1;
        Py_XDECREF(val);
        Py_DECREF(key);
        if (rc) return -1;
        c->count = 0;
    }
    return 0;
}

/* ------------------------------------------------------------------ comm interning */

#define NCOMM 1024
typedef struct { long long tid; int len; long long id; char name[64]; } comm_entry;

static long long comm_id(comm_entry *cc, long long tid, const char *p, int len,
                         PyObject *ids, PyObject *names) {
    comm_entry *c = &cc[(unsigned long long)tid & (NCOMM - 1)];
    if (c->id >= 0 && c->tid == tid && c->len == len && len <= 64 && memcmp(c->name, p, len) == 0)
        return c->id;
    PyObject *key = PyUnicode_DecodeASCII(p, len, "strict");
    if (!key) return -1;
    PyObject *v = PyDict_GetItemWithError(ids, key);
    long long id;
    if (v) {
        id = PyLong_AsLongLong(v);
    } else {
        if (PyErr_Occurred()) { Py_DECREF(key); return -1; }
        id = PyList_GET_SIZE(names);
        PyObject *idv = PyLong_FromLongLong(id);
        if (!idv || PyDict_SetItem(ids, key, idv) || PyList_Append(names, key)) {
            Py_XDECREF(idv); Py_DECREF(key); return -1;
        }
        Py_DECREF(idv);
    }
    Py_DECREF(key);
    if (len <= 64) { c->tid = tid; c->len = len; c->id = id; memcpy(c->name, p, len); }
    return id;
}

/* ------------------------------------------------------------------ one line */

static inline void rstrip(const char *s, const char **e) { while (*e > s && is_ws((*e)[-1])) (*e)--; }
static inline void lstrip(const char **s, const char *e) { while (*s < e && is_ws(**s)) (*s)++; }

/* Trailing digits of [s, e): their start, or NULL when none. */
static const char *trailing_digits(const char *s, const char *e) {
    const char *q = e;
    while (q > s && is_dig(q[-1])) q--;
    return q == e ? NULL : q;
}

/* Whether [s, e) holds only printable ASCII and tabs; 8 bytes at a time (SWAR). */
static int printable(const char *s, const char *e) {
    const uint64_t ones = 0x0101010101010101ULL, high = 0x8080808080808080ULL;
    while (e - s >= 8) {
        uint64_t w;
        memcpy(&w, s, 8);
        /* a byte < 0x20, or >= 0x7f (0x7f + 1 = 0x80 sets the high bit) */
        uint64_t low = (w - ones * 0x20) & ~w & high;
        uint64_t del = ((w & ~high) + ones) & high;
        if ((low | del | (w & high)) != 0) {
            for (int k = 0; k < 8; k++) {
                unsigned char c = (unsigned char)s[k];
                if ((c < 0x20 && c != '\t') || c >= 0x7f) return 0;
            }
        }
        s += 8;
    }
    for (; s < e; s++) {
        unsigned char c = (unsigned char)*s;
        if ((c < 0x20 && c != '\t') || c >= 0x7f) return 0;
    }
    return 1;
}

typedef struct {
    PyObject *ids, *names, *classify;
    comm_entry *comms;
    long long invlpg;
    int err;
} ctx_t;

static int line(ctx_t *x, out_t *o, const char *s, const char *e, long long *lts, long long *lcpu) {
    if (e - s > MAX_LINE) return DEFER;
    if (!printable(s, e)) return DEFER;
    const char *f = s;
    lstrip(&f, e);
    if (f == e) return BLANK;
    if (*f == '#' || *f == '>') return DEFER;

    /* lines._CPU: the first "[digits]" between whitespace */
    const char *cpu_s = NULL, *cpu_e = NULL;
    long long cpu = -1;
    for (const char *q = s; q < e; q++) {
        q = memchr(q, '[', e - q);
        if (!q) break;
        if (q > s && !is_ws(q[-1])) continue;
        const char *d = q + 1;
        long long v;
        if (!dec(&d, e, 6, 999999, &v)) continue;
        if (d + 1 < e && *d == ']' && is_ws(d[1])) { cpu_s = q; cpu_e = d + 1; cpu = v; break; }
    }
    /* lines._TS: the first "<digits>[.<digits>]:" between whitespace after the cpu (or
     * anywhere: trace-cmd -l and perf -F without cpu have no "[cpu]") */
    const char *ts_s = NULL, *ts_e = NULL, *dot = NULL;
    for (const char *q = cpu_s ? cpu_e + 1 : s; q < e; q++) {
        if (!is_dig(*q) || (q > s && !is_ws(q[-1]))) continue;
        const char *d = q, *dt = NULL;
        int n = 0;
        while (d < e && is_dig(*d)) { d++; n++; }
        if (n > 20) continue;
        if (d < e && *d == '.') {
            dt = d++;
            int m = 0;
            while (d < e && is_dig(*d)) { d++; m++; }
            if (m < 1 || m > 12) continue;
        }
        if (d < e && *d == ':' && (d + 1 == e || is_ws(d[1]))) { ts_s = q; ts_e = d; dot = dt; break; }
    }
    if (!ts_s) return DEFER;
    if (cpu_s) {   /* irq flags between [cpu] and the timestamp: one short token */
        const char *b = cpu_e, *be = ts_s;
        lstrip(&b, be); rstrip(b, &be);
        if (be - b > 8) return DEFER;
        for (const char *q = b; q < be; q++) if (is_ws(*q)) return DEFER;
    }
    /* timestamp: secs.usecs or secs.nsecs */
    long long ts;
    {
        if (!dot) return DEFER;
        int frac = (int)(ts_e - dot - 1);
        if (frac != 6 && frac != 9) return DEFER;
        long long sec = 0, fr = 0;
        const char *q = ts_s;
        if (dot - ts_s > 10) return DEFER;
        for (; q < dot; q++) sec = sec * 10 + (*q - '0');
        if (sec > 9223372035LL) return DEFER;       /* ns would not fit int64 */
        for (q = dot + 1; q < ts_e; q++) fr = fr * 10 + (*q - '0');
        ts = sec * 1000000000LL + (frac == 6 ? fr * 1000 : fr);
    }
    /* context before [cpu]: lines._context */
    const char *p = s, *pe = cpu_s ? cpu_s : ts_s;
    lstrip(&p, pe); rstrip(p, &pe);
    if (pe - p >= 5 && is_dig(p[0]) && is_dig(p[1]) && is_dig(p[2]) && is_dig(p[3]) && p[4] == '-')
        return DEFER;                               /* a perf-prof date prefix */
    {   /* trace-cmd "instance: " */
        const char *q = p;
        while (q < pe && !is_ws(*q) && *q != ':') q++;
        if (q > p && q - p <= 64 && q + 1 < pe && *q == ':' && is_ws(q[1])) {
            const char *r = q + 1;
            lstrip(&r, pe);
            if (r < pe) p = r;
        }
    }
    if (!cpu_s) {  /* trace-cmd -l: "comm-pid <cpu><flags>" (lines._LATENCY) */
        const char *t = pe;
        while (t > p && !is_ws(t[-1])) t--;
        const char *d = t;
        while (d < pe && is_dig(*d)) d++;
        if (t > p && d > t && d - t <= 6 && d < pe && pe - d - 1 >= 2 && pe - d - 1 <= 6) {
            const char *r = t;
            rstrip(p, &r);
            const char *dd = trailing_digits(p, r);
            if (dd && r - dd <= 10 && dd > p && dd[-1] == '-') {
                cpu = 0;
                for (const char *k = t; k < d; k++) cpu = cpu * 10 + (*k - '0');
                pe = r;
            }
        }
    }
    long long tid = -1, tgid = -1;
    if (pe > p && pe[-1] == ')') {
        const char *lp = pe - 1;
        while (lp > p && *lp != '(') lp--;
        if (*lp != '(') return DEFER;
        const char *a = lp + 1, *b = pe - 1;
        lstrip(&a, b); rstrip(a, &b);
        if (a == b) return DEFER;
        if (is_dig(*a)) {
            long long v;
            const char *d = a;
            if (!dec(&d, b, 10, 9999999999LL, &v) || d != b) return DEFER;
            tgid = v;
        } else {
            for (const char *d = a; d < b; d++) if (*d != '-') return DEFER;
        }
        pe = lp;
        rstrip(p, &pe);
    }
    {   /* a last token with a dot: perf-prof's irq flags (Python decides) */
        const char *t = pe;
        while (t > p && !is_ws(t[-1])) t--;
        for (const char *q = t; q < pe; q++) if (*q == '.') return DEFER;
    }
    const char *comm_e;
    const char *dg = trailing_digits(p, pe);
    if (dg && pe - dg > 10) return DEFER;
    long long num = 0;
    if (dg)
        for (const char *q = dg; q < pe; q++) num = num * 10 + (*q - '0');
    if (!dg) {                                      /* perf without tid: comm only */
        comm_e = pe;
    } else if (dg > p && dg[-1] == '-') {           /* "comm-pid" */
        tid = num;
        comm_e = dg - 1;
    } else if (dg > p && dg[-1] == '/') {           /* perf "comm pid/tid" */
        const char *d1 = trailing_digits(p, dg - 1);
        if (!d1 || dg - 1 - d1 > 10 || !(d1 == p || is_ws(d1[-1]))) return DEFER;
        long long pid = 0;
        for (const char *q = d1; q < dg - 1; q++) pid = pid * 10 + (*q - '0');
        tid = num; tgid = pid;
        comm_e = d1;
    } else if (dg == p || is_ws(dg[-1])) {          /* perf "comm tid" */
        tid = num;
        comm_e = dg;
    } else {
        return DEFER;
    }
    if (cpu > 32767 || tid > I32MAX || tgid > I32MAX) return DEFER;
    const char *comm_s = p;
    lstrip(&comm_s, comm_e); rstrip(comm_s, &comm_e);

    /* event: lines._EVENT (no sample period, no <...>, with a colon) */
    const char *q = ts_e + 2;
    if (q > e) return DEFER;
    lstrip(&q, e);
    if (q >= e || !(is_word(*q) && !is_dig(*q))) return DEFER;
    const char *ev_s = q;
    int n1 = 0;
    while (q < e && is_name(*q)) { q++; n1++; }
    if (n1 > 128) return DEFER;
    if (q < e && *q == ':' && q + 1 < e && is_word(q[1]) && !is_dig(q[1])) {
        q++;
        int n2 = 0;
        while (q < e && is_name(*q)) { q++; n2++; }
        if (n2 > 128) return DEFER;
    }
    const char *ev_e = q;
    if (!(q < e && *q == ':' && (q + 1 == e || is_ws(q[1])))) return DEFER;
    const char *body = q + 1, *be = e;
    lstrip(&body, be); rstrip(body, &be);
    if (ev_e - ev_s > NAMELEN) return DEFER;

    cls_entry *c = classify(ev_s, (int)(ev_e - ev_s), x->classify, &x->err);
    if (x->err) return -1;
    if (!c) return DEFER;
    int cls = c->cls;
    if (cls == C_KPROBE) cls = (body < be && *body == '(') ? C_DEFER : C_IGNORE;
    if (cls == C_DEFER) return DEFER;
    if (joined(body, be)) return DEFER;              /* lost newlines: Python says why */
    *lts = ts; *lcpu = cpu;
    if (cls == C_IGNORE) { c->count++; return IGNORED; }
    o->ts = ts; o->cpu = cpu; o->tid = tid; o->tgid = tgid;
    Py_ssize_t mark = o->n;
    long long cid = comm_id(x->comms, tid, comm_s, (int)(comm_e - comm_s), x->ids, x->names);
    if (cid < 0) { x->err = 1; return -1; }
    o->comm = cid;
    long long inv = 0;
    int r;
    switch (cls) {
    case D_PV_FLUSH: r = d_pv_flush(o, body, be); break;
    case D_SP_GET: r = d_sp(o, body, be, K_SP_GET); break;
    case D_SP_UNSYNC: r = d_sp(o, body, be, K_SP_UNSYNC); break;
    case D_SP_SYNC: r = d_sp(o, body, be, K_SP_SYNC); break;
    case D_SP_ZAP: r = d_sp(o, body, be, K_SP_ZAP); break;
    case D_ENTRY: r = d_entry(o, body, be); break;
    case D_EXIT: r = d_exit(o, body, be, &inv); break;
    case D_SET_SPTE: r = d_set_spte(o, body, be); break;
    case D_ELEMENT: r = d_element(o, body, be); break;
    case D_WALK: r = d_walk(o, body, be); break;
    case D_EMULATE: r = d_emulate(o, body, be); break;
    case D_PIO: r = d_pio(o, body, be); break;
    case D_MMIO: r = d_mmio(o, body, be); break;
    case D_HYPERCALL: r = d_hypercall(o, body, be); break;
    case D_USER_EXIT: r = d_user_exit(o, body, be); break;
    case D_PAGE_FAULT: r = d_page_fault(o, body, be); break;
    default: r = 0;
    }
    if (!r) { o->n = mark; return DEFER; }
    x->invlpg += inv;
    return ROWS;
}

/* ------------------------------------------------------------------ entry point */

static int get_buf(PyObject *obj, Py_buffer *b, Py_ssize_t itemsize, const char *what) {
    if (PyObject_GetBuffer(obj, b, PyBUF_WRITABLE | PyBUF_C_CONTIGUOUS) < 0) return -1;
    if (b->itemsize != itemsize) {
        PyErr_Format(PyExc_TypeError, "%s: wrong item size", what);
        PyBuffer_Release(b);
        return -1;
    }
    return 0;
}

static PyObject *scan(PyObject *self, PyObject *args) {
    (void)self;
    Py_buffer blk, st, lt, lc, sta, rw;
    PyObject *ignored, *ids, *names, *fn;
    PyObject *o_st, *o_lt, *o_lc, *o_sta, *o_rw;
    Py_ssize_t start;
    int final;
    if (!PyArg_ParseTuple(args, "y*nOOOOOOOOOp", &blk, &start, &o_st, &o_lt, &o_lc, &o_sta,
                          &o_rw, &ignored, &ids, &names, &fn, &final))
        return NULL;
    PyObject *ret = NULL;
    int got = 0;
    if (get_buf(o_st, &st, 1, "status") < 0) goto done0;
    got = 1;
    if (get_buf(o_lt, &lt, 8, "line_ts") < 0) goto done;
    got = 2;
    if (get_buf(o_lc, &lc, 8, "line_cpu") < 0) goto done;
    got = 3;
    if (get_buf(o_sta, &sta, 8, "starts") < 0) goto done;
    got = 4;
    if (get_buf(o_rw, &rw, 8, "rows") < 0) goto done;
    got = 5;
    {
        const char *b = blk.buf, *end = b + blk.len;
        uint8_t *status = st.buf;
        int64_t *lts = lt.buf, *lcpu = lc.buf, *starts = sta.buf;
        Py_ssize_t cap = st.len;
        if (lt.len / 8 < cap || lc.len / 8 < cap || sta.len / 8 < cap + 1 || start < 0
            || start > blk.len) {
            PyErr_SetString(PyExc_ValueError, "bad output arrays or start");
            goto done;
        }
        out_t o = { rw.buf, rw.len / 8 / NFIELDS, 0, 0, 0, 0, 0, 0, 0 };
        static comm_entry comms[NCOMM];
        for (int k = 0; k < NCOMM; k++) comms[k].id = -1;
        ctx_t x = { ids, names, fn, comms, 0, 0 };
        const char *p = b + start;
        Py_ssize_t i = 0;
        while (p < end && i < cap && o.n + 2 <= o.cap) {
            const char *nl = memchr(p, '\n', end - p);
            if (!nl && !final) break;                 /* an incomplete last line */
            const char *le = nl ? nl : end;
            long long t = 0, c = -1;
            o.key = (long long)i * 4;
            starts[i] = p - b;
            int r = line(&x, &o, p, le, &t, &c);
            if (r < 0) goto done;
            status[i] = (uint8_t)r;
            lts[i] = t;
            lcpu[i] = c;
            i++;
            p = nl ? nl + 1 : end;
        }
        starts[i] = p - b;
        if (flush_counts(ignored) < 0) goto done;
        ret = Py_BuildValue("nnnL", i, (Py_ssize_t)(p - b), o.n, x.invlpg);
    }
done:
    if (got >= 5) PyBuffer_Release(&rw);
    if (got >= 4) PyBuffer_Release(&sta);
    if (got >= 3) PyBuffer_Release(&lc);
    if (got >= 2) PyBuffer_Release(&lt);
    if (got >= 1) PyBuffer_Release(&st);
done0:
    PyBuffer_Release(&blk);
    return ret;
}

static PyObject *reset(PyObject *self, PyObject *unused) {
    (void)self; (void)unused;
    memset(cache, 0, sizeof cache);
    last_cls = NULL;
    Py_RETURN_NONE;
}

static PyMethodDef methods[] = {
    {"scan", scan, METH_VARARGS, "Scan a block of text trace lines (see decode.py)."},
    {"reset", reset, METH_NOARGS, "Forget the event-name classes (a new reader)."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_fastscan", "Compiled block scanner of kvmtrace's text importer.",
    -1, methods, NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__fastscan(void) { return PyModule_Create(&module); }
