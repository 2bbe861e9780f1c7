/*
 * kvmtrace BPF prelude: the record, the maps, and the emit/filter helpers every
 * generated probe handler calls.  BCC compiles this text with the generated
 * handlers appended (kvmtrace/live/program.py); the KT_* macros it uses are
 * #defined before it from validated integers only.
 *
 * Record transport: a BPF ring buffer (kernel/bpf/ringbuf.c, 5.8+) of fixed-size
 * 72-byte records.  Each ring buffer slot is an 8-byte header (u32 len with
 * BPF_RINGBUF_BUSY_BIT 31 / BPF_RINGBUF_DISCARD_BIT 30, u32 pg_off) followed by
 * the record, rounded up to 8 bytes: so every slot is exactly 80 bytes, and user
 * space reads the ring as an array (kvmtrace/live/ringbuf.py).
 *
 * Volume control (DESIGN §3): a flush window opens on a thread when the guest's
 * flush request is serviced there and closes at its next guest-run evidence.
 * Evidence tracepoints fire at high rates (every fault, every emulated
 * instruction), so they are emitted only while a window is open on their thread
 * (at most KT_EVIDENCE_BUDGET of them per window) and otherwise only counted.
 * kvm_pv_tlb_flush fires on every vCPU load on hosts that refresh steal time on
 * each KVM_RUN (PVM does): with need_flush_tlb=0 it is emitted only when it
 * teaches a new thread -> vCPU id pairing.
 */
#include <uapi/linux/ptrace.h>

/* TASK_COMM_LEN (include/linux/sched.h): the size bpf_get_current_comm() fills.  Not
 * included from there: parsing linux/sched.h was a quarter of BCC's compile time. */
#define KT_COMM_LEN 16

struct kt_record {
	u64 ts;            /* bpf_ktime_get_ns(): CLOCK_MONOTONIC */
	s64 gfn;
	s64 value;
	u32 role;          /* valid when flags & KT_F_ROLE */
	s32 root_count;
	u32 tgid;
	u32 tid;
	s32 vcpu;
	u16 cpu;
	u8 kind;           /* kvmtrace.schema.Kind */
	s8 level;
	s8 unsync;
	s8 created;
	s8 need_flush;
	u8 flags;
	s32 unsync_children;   /* exact mode: kvm_mmu_page.unsync_children */
	s64 parent_gfn;        /* SP_LINK: the parent SP's gfn */
	u32 parent_role;       /* SP_LINK: valid when flags & KT_F_PROLE */
	u32 pad;
};
_Static_assert(sizeof(struct kt_record) == KT_RECORD_SIZE, "kt_record size");

#define KT_F_ROLE 1

struct kt_comm {
	char comm[KT_COMM_LEN];
};

BPF_RINGBUF_OUTPUT(kt_events, KT_RINGBUF_PAGES);
/* Records the ring buffer had no room for, per CPU. */
BPF_PERCPU_ARRAY(kt_lost, u64, 1);
/* Events seen but not emitted (no open window / repeated pv flush), by kind. */
BPF_PERCPU_ARRAY(kt_counted, u64, KT_NKINDS);
/* tid -> evidence events still to emit in its open flush window. */
BPF_HASH(kt_window, u32, u32, KT_MAX_THREADS);
/* tid -> vcpu_id + 1 last emitted by kvm_pv_tlb_flush on that thread. */
BPF_TABLE("lru_hash", u32, u32, kt_vcpu_seen, KT_MAX_THREADS);
/* tid -> task name when the thread first emitted a record. */
BPF_TABLE("lru_hash", u32, struct kt_comm, kt_comm, KT_MAX_THREADS);

/* Kernel memory reads (exact.c, raw tracepoints: kvmtrace/sources/live/rawtp.py):
 * kt_rd8/16/32/64(addr), 0 where the read faults. */
#define KT_RD(bits) \
static __always_inline u##bits kt_rd##bits(u64 addr) \
{ \
	u##bits v = 0; \
	bpf_probe_read_kernel(&v, sizeof(v), (void *)addr); \
	return v; \
}
KT_RD(64)
KT_RD(32)
KT_RD(16)
KT_RD(8)

/* c ? a : b for raw-tracepoint arguments: both loaded before the choice.  Without the
 * barrier clang selects the address and loads from ctx at a computed offset, which the
 * verifier refuses ("dereference of modified ctx ptr"). */
static __always_inline u64 kt_select(u64 c, u64 a, u64 b)
{
	asm volatile("" : "+r"(a), "+r"(b));
	return c ? a : b;
}

#if KT_TGID_SLOTS
/* The TGIDs to record, written by user space before any probe is attached.  A map, not
 * constants in the text: the compiled program then serves every run (progcache.py). */
struct kt_tgids {
	u32 n;
	u32 tgid[KT_TGID_SLOTS];
};
BPF_ARRAY(kt_tgid_filter, struct kt_tgids, 1);
#endif

static __always_inline int kt_skip(u32 tgid)
{
#if KT_TGID_SLOTS
	u32 zero = 0;
	struct kt_tgids *f = kt_tgid_filter.lookup(&zero);
	if (!f)
		return 1;
	u32 n = f->n;
#pragma unroll
	for (int i = 0; i < KT_TGID_SLOTS; i++) {
		if (i >= n)
			return 1;
		if (f->tgid[i] == tgid)
			return 0;
	}
	return 1;
#else
	return 0;
#endif
}

static __always_inline void kt_init(struct kt_record *e, u8 kind, u64 pid_tgid)
{
	e->ts = bpf_ktime_get_ns();
	e->tgid = pid_tgid >> 32;
	e->tid = (u32)pid_tgid;
	e->cpu = bpf_get_smp_processor_id();
	e->kind = kind;
	e->gfn = -1;
	e->root_count = -1;
	e->vcpu = -1;
	e->level = -1;
	e->unsync = -1;
	e->created = -1;
	e->need_flush = -1;
	e->unsync_children = -1;
	e->parent_gfn = -1;
}

static __always_inline void kt_count(u8 kind)
{
	u32 k = kind;
	u64 *c = kt_counted.lookup(&k);
	if (c)
		(*c)++;
}

static __always_inline int kt_emit(struct kt_record *e)
{
	u32 tid = e->tid;
	if (!kt_comm.lookup(&tid)) {
		struct kt_comm c = {};
		bpf_get_current_comm(&c.comm, sizeof(c.comm));
		kt_comm.update(&tid, &c);
	}
	struct kt_record *r = kt_events.ringbuf_reserve(sizeof(struct kt_record));
	if (!r) {
		u32 zero = 0;
		u64 *lost = kt_lost.lookup(&zero);
		if (lost)
			(*lost)++;
		return 0;
	}
	__builtin_memcpy(r, e, sizeof(struct kt_record));
	kt_events.ringbuf_submit(r, 0);
	return 0;
}

static __always_inline int kt_window_open(u32 tid)
{
	return kt_window.lookup(&tid) != NULL;
}

/* Always recorded: SP events, function probes. */
static __always_inline int kt_always(struct kt_record *e)
{
	return kt_emit(e);
}

/* A flush request or flush-function entry: opens the thread's window. */
static __always_inline int kt_open(struct kt_record *e)
{
	u32 tid = e->tid;
	u32 budget = KT_EVIDENCE_BUDGET;
	kt_window.update(&tid, &budget);
#ifdef KT_EXACT
	kt_exact_open(tid);      /* kvmtrace/probes/exact.c: snapshot the roots at the next evidence */
#endif
	return kt_emit(e);
}

/* kvm:kvm_pv_tlb_flush (arch/x86/kvm/x86.c, record_steal_time()). */
static __always_inline int kt_pv_flush(struct kt_record *e)
{
	u32 tid = e->tid;
	u32 seen = (u32)e->vcpu + 1;
	u32 *old = kt_vcpu_seen.lookup(&tid);
	if (e->need_flush > 0) {
		kt_vcpu_seen.update(&tid, &seen);
		return kt_open(e);
	}
	if (old && *old == seen) {
		kt_count(e->kind);
		return 0;
	}
	kt_vcpu_seen.update(&tid, &seen);
	return kt_emit(e);
}

/* Guest-run evidence: recorded only inside an open window of this thread.
 * closes == 0 for events that do not prove the guest ran (a KVM_RUN that
 * returned for a signal): they are recorded but do not use up the window. */
static __always_inline int kt_evidence(struct kt_record *e, int closes)
{
	u32 tid = e->tid;
	u32 *left = kt_window.lookup(&tid);
	if (!left) {
		kt_count(e->kind);
		return 0;
	}
	if (closes) {
		if (*left <= 1)
			kt_window.delete(&tid);
		else
			(*left)--;
	}
	return kt_emit(e);
}

/* kvm:kvm_exit (vcpu_enter_guest()): guest-run evidence; on 6.14+ it also shows
 * vcpu->requests, and a pending KVM_REQ_TLB_FLUSH_GUEST there is a flush request
 * (kind FLUSH_REQUEST_GUEST, emitted right after the exit, same timestamp). */
static __always_inline int kt_guest_exit(struct kt_record *e, int flush_guest)
{
	if (!flush_guest)
		return kt_evidence(e, 1);
	u32 tid = e->tid;
	kt_window.delete(&tid);
	kt_emit(e);
	e->kind = KT_KIND_FLUSH_REQUEST_GUEST;
	return kt_open(e);
}

/* Guest flush paths seen as emulated instructions (kvm:kvm_emulate_insn; on PVM the
 * guest kernel runs at CPL 3, so its privileged instructions trap and are emulated).
 * Intel SDM vol. 2: 0f 22 /r (mod 11) MOV to CRn, n = ModRM.reg (+8 with REX.R);
 * 0f 01 /7 (memory operand) INVLPG; 66 0f 38 82 INVPCID.  Mirrors
 * kvmtrace/sources/text/payloads.py insn_flush().  Returns a Kind code or 0. */
static __always_inline int kt_rex(u8 b)
{
	return b >= 0x40 && b <= 0x4f;
}

static __always_inline int kt_op_flush(const u8 *b, int opsize, int rex_r)
{
	u8 op = b[1], modrm = b[2];
	int mod = modrm >> 6, reg = ((modrm >> 3) & 7) | (rex_r << 3);
	if (b[0] != 0x0f)
		return 0;
	if (op == 0x22 && mod == 3 && reg == 3)
		return KT_KIND_FLUSH_CR3;
	if (op == 0x22 && mod == 3 && reg == 4)
		return KT_KIND_FLUSH_CR4;
	if (op == 0x01 && mod != 3 && ((modrm >> 3) & 7) == 7)
		return KT_KIND_FLUSH_INVLPG;
	if (op == 0x38 && modrm == 0x82 && opsize)
		return KT_KIND_FLUSH_INVPCID;
	return 0;
}

static __always_inline int kt_insn_flush(const u8 *insn)
{
	u8 b[8] = {};
	__builtin_memcpy(b, insn, 8);
	if (b[0] == 0x66) {
		if (kt_rex(b[1]))
			return kt_op_flush(b + 2, 1, (b[1] >> 2) & 1);
		return kt_op_flush(b + 1, 1, 0);
	}
	if (kt_rex(b[0]))
		return kt_op_flush(b + 1, 0, (b[0] >> 2) & 1);
	return kt_op_flush(b, 0, 0);
}

/* kvm:kvm_emulate_insn: guest-run evidence; an emulated flush instruction then opens a
 * window of its own kind (same timestamp, after the evidence record). */
static __always_inline int kt_emulate(struct kt_record *e, int flush_kind)
{
	if (!flush_kind)
		return kt_evidence(e, 1);
	u32 tid = e->tid;
	if (kt_window_open(tid)) {
		kt_window.delete(&tid);
		kt_emit(e);
	}
	e->kind = flush_kind;
	e->value = -1;
#ifdef KT_INVLPG_EA
	/* Exact mode: INVLPG's address from KVM's emulator context (exact.c). */
	if (flush_kind == KT_KIND_FLUSH_INVLPG)
		e->value = kt_invlpg_address();
#endif
	return kt_open(e);
}

/* kvm:kvm_cr (trace_kvm_cr_write: VMX handle_cr(), SVM cr_interception()): a write of
 * CR3 without X86_CR3_PCID_NOFLUSH, or of CR4, is a guest flush path; other CRs and
 * reads are only counted. */
static __always_inline int kt_cr_write(struct kt_record *e, u32 cr)
{
	if (cr == 3) {
		e->need_flush = ((u64)e->value >> 63) ? 0 : 1;
		return kt_open(e);
	}
	if (cr == 4) {
		e->kind = KT_KIND_FLUSH_CR4;
		return kt_open(e);
	}
	kt_count(e->kind);
	return 0;
}
