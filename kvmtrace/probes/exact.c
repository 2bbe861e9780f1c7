/*
 * kvmtrace exact mode: KVM's own shadow-MMU state read through raw tracepoints.
 *
 * Appended after kvmtrace.c when the exact mode is on.  Every KT_OFF_* offset is
 * #defined by kvmtrace/sources/live/program.py from the running kernel's BTF
 * (kvmtrace/host/exactlayout.py); nothing here knows a kernel version.
 *
 * - SP events: the kvmmmu tracepoints kvm_mmu_get_page(sp, created),
 *   kvm_mmu_unsync_page(sp), kvm_mmu_sync_page(sp), kvm_mmu_prepare_zap_page(sp)
 *   (arch/x86/kvm/mmu/mmutrace.h) give arg0 = struct kvm_mmu_page *.  The record
 *   carries the full role word (union kvm_mmu_page_role.word) and unsync_children,
 *   then one SP_LINK record per parent found in sp->parent_ptes.
 * - sp->parent_ptes (struct kvm_rmap_head, arch/x86/kvm/mmu/mmu.c pte_list_add()):
 *   0 = no parent; bit 0 clear = the one parent SPTE pointer; bit 0 set
 *   (KVM_RMAP_MANY) = a struct pte_list_desc chain.  Bit 1 is KVM_RMAP_LOCKED
 *   (6.13+), so both low bits are masked off the pointer.
 * - The parent of an SPTE pointer is the SP whose spt page holds it: kt_spt maps
 *   spt page -> SP, filled at every SP event.  A parent never seen is emitted
 *   with parent_gfn -1 (present, not identified).
 * - The direct-map base (page_offset_base, randomised) is learnt from a link: a
 *   non-leaf parent SPTE holds the physical address of the child's spt page, so
 *   base = child->spt - (spte & KT_SPTE_PA_MASK); accepted only when PUD (1 GiB)
 *   aligned, as the kernel places it (arch/x86/mm/kaslr.c).  Root hpa -> SP is
 *   then kt_spt[hpa + base].
 * - ROOT_STATE: the running vCPU is container_of(current->preempt_notifiers.first,
 *   struct kvm_vcpu, preempt_notifier.link) (virt/kvm/kvm_main.c vcpu_load());
 *   its vcpu->arch.mmu->root and prev_roots[] are read at guest-run evidence when
 *   a flush window was opened since the last snapshot, when the thread's vCPU or
 *   root.hpa changed, and at the thread's first evidence.  The rows of one
 *   snapshot share their ts and precede the evidence record.
 * - PVM flush hypercalls (KT_PVM_HC, kvm_pvm only): no tracepoint names them, but
 *   the kvm_pvm vCPU run loop writes an MSR (MSR_MISC_FEATURES_ENABLES, CPUID
 *   faulting) right after every guest exit, before KVM handles the exit, so the
 *   msr:write_msr raw tracepoint fires on the vCPU thread at that point.  There,
 *   struct vcpu_pvm's switcher save area holds the exit: n.exit.vector 0x1b
 *   (int 0x1b, the hypercall gate) and n.regs[0] (RAX) the hypercall number.  A
 *   flush number opens a FLUSH_PVM_HYPERCALL window, once per exit
 *   (kvm_vcpu.stat.exits tells exits apart; the write before the next entry sees
 *   RAX = the hypercall's result, not its number).  Observed on the project's
 *   host; the offsets come from BTF (kvmtrace/host/exactlayout.py).
 * - INVLPG's address (KT_INVLPG_EA): kvm:kvm_emulate_insn fires once KVM's emulator
 *   has decoded the instruction (x86_decode_emulated_instruction() ->
 *   trace_kvm_emulate_insn_start); INVLPG (0f 01 /7, em_invlpg) has its memory
 *   operand in vcpu->arch.emulate_ctxt->src.addr.mem {ea, seg}.  In 64-bit mode
 *   ES/CS/SS/DS have base 0, so ea is the linear address; FS/GS (unknown base)
 *   and other modes give -1 (unknown).
 */

#define KT_F_PROLE 2
#define KT_RMAP_PTR_MASK (~3ULL)
#define KT_PAGE_MASK (~4095ULL)
#define KT_SPTE_PA_MASK 0x000ffffffffff000ULL
#define KT_PUD_MASK ((1ULL << 30) - 1)
#define KT_INVALID_PAGE (~0ULL)

struct kt_sp_info {
	u64 sp;
	s64 gfn;
	u32 role;
	u32 pad;
};

/* A raw tracepoint of the exact mode, attached by name (kvmtrace/sources/live/program.py
 * exact_fn(); not BCC's RAW_TRACEPOINT_PROBE, which BCC would load and attach itself). */
#define KT_EXACT_PROBE(event) int kt_exact__##event(struct bpf_raw_tracepoint_args *ctx)

/* spt page (kernel virtual) -> the SP that owns it. */
BPF_TABLE("lru_hash", u64, struct kt_sp_info, kt_spt, KT_MAX_SPS);
/* [0] = learnt direct-map base (0 = not yet); [1] = link lists cut at KT_MAX_PARENTS. */
BPF_ARRAY(kt_exact_stat, u64, 4);
/* tid -> last snapshot: vcpu pointer, root.hpa. */
struct kt_root_seen {
	u64 vcpu;
	u64 hpa;
};
BPF_TABLE("lru_hash", u32, struct kt_root_seen, kt_root_seen, KT_MAX_THREADS);
/* tid -> 1 when a flush window opened since the thread's last snapshot. */
BPF_TABLE("lru_hash", u32, u8, kt_snap_pending, KT_MAX_THREADS);

/* kt_rd8/16/32/64: kvmtrace.c. */

static __always_inline void kt_stat_add(u32 i, u64 n)
{
	u64 *v = kt_exact_stat.lookup(&i);
	if (v)
		__sync_fetch_and_add(v, n);
}

/* Fill the SP columns of e from the struct kvm_mmu_page at sp. */
static __always_inline void kt_sp_fill(struct kt_record *e, u64 sp)
{
	u32 role = kt_rd32(sp + KT_OFF_SP_ROLE);
	e->gfn = (s64)kt_rd64(sp + KT_OFF_SP_GFN);
	e->role = role;
	e->flags |= KT_F_ROLE;
	e->level = role & 0xf;
	e->unsync = kt_rd8(sp + KT_OFF_SP_UNSYNC) != 0;
	e->unsync_children = (s32)kt_rd32(sp + KT_OFF_SP_UNSYNC_CHILDREN);
#ifdef KT_OFF_SP_ROOT_COUNT
	e->root_count = (s32)kt_rd32(sp + KT_OFF_SP_ROOT_COUNT);
#endif
}

static __always_inline void kt_sp_remember(u64 sp, struct kt_record *e)
{
	u64 spt = kt_rd64(sp + KT_OFF_SP_SPT);
	if (!spt)
		return;
	struct kt_sp_info info = {.sp = sp, .gfn = e->gfn, .role = e->role};
	kt_spt.update(&spt, &info);
}

/* One SP_LINK record for the parent SPTE at sptep of the child described by e. */
static __always_inline void kt_link(struct kt_record *e, u64 child_spt, u64 sptep, s64 present)
{
	struct kt_record l = *e;
	l.kind = KT_KIND_SP_LINK;
	l.value = present;
	l.created = -1;
	u64 page = sptep & KT_PAGE_MASK;
	struct kt_sp_info *p = kt_spt.lookup(&page);
	if (p) {
		l.parent_gfn = p->gfn;
		l.parent_role = p->role;
		l.flags |= KT_F_PROLE;
	}
	kt_emit(&l);
	/* Learn the direct-map base once from a link (see the header). */
	u32 zero = 0;
	u64 *base = kt_exact_stat.lookup(&zero);
	if (base && !*base && child_spt) {
		u64 pa = kt_rd64(sptep) & KT_SPTE_PA_MASK;
		u64 b = child_spt - pa;
		if (pa && !(b & KT_PUD_MASK) && (b >> 63))
			*base = b;
	}
}

/* Every parent of sp, from sp->parent_ptes. */
static __always_inline void kt_links(struct kt_record *e, u64 sp, s64 present)
{
	u64 head = kt_rd64(sp + KT_OFF_SP_PARENT_PTES);
	u64 spt = kt_rd64(sp + KT_OFF_SP_SPT);
	if (!head)
		return;
	if (!(head & 1)) {
		kt_link(e, spt, head & KT_RMAP_PTR_MASK, present);
		return;
	}
	u64 desc = head & KT_RMAP_PTR_MASK;
	for (int d = 0; d < KT_MAX_DESCS; d++) {
		if (!desc)
			return;
		for (int i = 0; i < KT_DESC_SLOTS; i++) {
#ifdef KT_OFF_DESC_SPTE_COUNT
			if (i >= (int)kt_rd32(desc + KT_OFF_DESC_SPTE_COUNT))
				break;
#endif
			u64 sptep = kt_rd64(desc + KT_OFF_DESC_SPTES + 8 * i);
			if (!sptep)
				break;
			kt_link(e, spt, sptep, present);
		}
		desc = kt_rd64(desc + KT_OFF_DESC_MORE);
	}
	if (desc)
		kt_stat_add(1, 1);
}

/* A raw kvmmmu SP tracepoint: the SP record, then its parent links. */
static __always_inline int kt_sp_event(u64 sp, u8 kind, int created, int links, s64 present)
{
	u64 id = bpf_get_current_pid_tgid();
	if (kt_skip(id >> 32) || !sp)
		return 0;
	struct kt_record e = {};
	kt_init(&e, kind, id);
	kt_sp_fill(&e, sp);
	e.created = created;
	kt_sp_remember(sp, &e);
	kt_emit(&e);
	if (links)
		kt_links(&e, sp, present);
	return 0;
}

static __always_inline u64 kt_current_vcpu(void)
{
	u64 task = bpf_get_current_task();          /* struct task_struct * */
	u64 first = kt_rd64(task + KT_OFF_TASK_NOTIFIERS);
	return first ? first - KT_OFF_VCPU_NOTIFIER : 0;
}

/* One ROOT_STATE row for the root at hpa (slot 0 = root, 1.. = prev_roots). */
static __always_inline void kt_root_row(struct kt_record *e, u64 hpa, s64 slot, u64 base)
{
	struct kt_record r = *e;
	r.value = slot;
	if (hpa == KT_INVALID_PAGE || !hpa) {
		r.unsync = 0;          /* no valid root: nothing unsync under it */
		r.unsync_children = 0;
		kt_emit(&r);
		return;
	}
	if (base) {
		u64 va = hpa + base;
		struct kt_sp_info *sp = kt_spt.lookup(&va);
		if (sp) {
			kt_sp_fill(&r, sp->sp);
			kt_emit(&r);
			return;
		}
	}
	/* A valid root whose SP is not known (yet): gfn -1 and unsync -1. */
	kt_emit(&r);
}

static __always_inline void kt_snapshot(u32 tid, u64 id, u64 vcpu, u64 mmu, u64 hpa)
{
	struct kt_record e = {};
	kt_init(&e, KT_KIND_ROOT_STATE, id);
	e.vcpu = (s32)kt_rd32(vcpu + KT_OFF_VCPU_ID);
	u32 zero = 0;
	u64 *basep = kt_exact_stat.lookup(&zero);
	u64 base = basep ? *basep : 0;
	kt_root_row(&e, hpa, 0, base);
	for (int i = 0; i < KT_PREV_ROOTS; i++) {
		u64 h = kt_rd64(mmu + KT_OFF_MMU_PREV_ROOTS + KT_PREV_ROOT_STRIDE * i + KT_OFF_ROOT_INFO_HPA);
		kt_root_row(&e, h, i + 1, base);
	}
}

/* At every guest-run evidence event (before the window filter). */
static __always_inline void kt_exact_evidence(u64 id)
{
	u32 tid = (u32)id;
	u64 vcpu = kt_current_vcpu();
	if (!vcpu)
		return;
	u64 mmu = kt_rd64(vcpu + KT_OFF_VCPU_MMU);
	if (!mmu)
		return;
	u64 hpa = kt_rd64(mmu + KT_OFF_MMU_ROOT_HPA);
	struct kt_root_seen *seen = kt_root_seen.lookup(&tid);
	u8 *pending = kt_snap_pending.lookup(&tid);
	if (seen && seen->vcpu == vcpu && seen->hpa == hpa && !pending)
		return;
	kt_snapshot(tid, id, vcpu, mmu, hpa);
	struct kt_root_seen now = {.vcpu = vcpu, .hpa = hpa};
	kt_root_seen.update(&tid, &now);
	if (pending)
		kt_snap_pending.delete(&tid);
}

#ifdef KT_INVLPG_EA
static __always_inline s64 kt_invlpg_address(void)
{
	u64 vcpu = kt_current_vcpu();
	if (!vcpu)
		return -1;
	u64 ctxt = kt_rd64(vcpu + KT_OFF_VCPU_EMULATE_CTXT);
	if (!ctxt || kt_rd32(ctxt + KT_OFF_EMUL_MODE) != KT_EMUL_MODE_PROT64)
		return -1;
	if (kt_rd32(ctxt + KT_OFF_EMUL_SRC_SEG) > KT_SREG_DS)
		return -1;
	return (s64)kt_rd64(ctxt + KT_OFF_EMUL_SRC_EA);
}
#endif

static __always_inline void kt_exact_open(u32 tid)
{
	u8 one = 1;
	kt_snap_pending.update(&tid, &one);
}

KT_EXACT_PROBE(kvm_mmu_get_page)
{
	/* An existing SP (created == 0) shows its current parents. */
	int created = ctx->args[1] != 0;
	return kt_sp_event(ctx->args[0], KT_KIND_SP_GET, created, !created, 1);
}

KT_EXACT_PROBE(kvm_mmu_unsync_page)
{
	return kt_sp_event(ctx->args[0], KT_KIND_SP_UNSYNC, -1, 1, 1);
}

KT_EXACT_PROBE(kvm_mmu_sync_page)
{
	return kt_sp_event(ctx->args[0], KT_KIND_SP_SYNC, -1, 1, 1);
}

KT_EXACT_PROBE(kvm_mmu_prepare_zap_page)
{
	/* __kvm_mmu_prepare_zap_page() unlinks the parents right after this event. */
	return kt_sp_event(ctx->args[0], KT_KIND_SP_ZAP, -1, 1, 0);
}

#ifdef KT_PVM_HC
/* tid -> kvm_vcpu.stat.exits at the last flush hypercall emitted (one per exit). */
BPF_TABLE("lru_hash", u32, u64, kt_pvm_hc_exit, KT_MAX_THREADS);
BPF_ARRAY(kt_pvm_hc_stat, u64, 2);    /* [0] write_msr on a vCPU, [1] flush hypercalls */

static __always_inline void kt_stat_add_pvm(u32 i)
{
	u64 *v = kt_pvm_hc_stat.lookup(&i);
	if (v)
		__sync_fetch_and_add(v, 1);
}

KT_EXACT_PROBE(write_msr)
{
	u64 id = bpf_get_current_pid_tgid();
	if (kt_skip(id >> 32))
		return 0;
	u64 vcpu = kt_current_vcpu();
	if (!vcpu)
		return 0;
	kt_stat_add_pvm(0);
	u64 pvm = vcpu - KT_OFF_PVM_VCPU;     /* container_of(vcpu, struct vcpu_pvm, vcpu) */
	if (kt_rd64(pvm + KT_OFF_PVM_EXIT_VECTOR) != KT_PVM_HC_VECTOR)
		return 0;
	u64 nr = kt_rd64(pvm + KT_OFF_PVM_REGS);   /* regs[VCPU_REGS_RAX] */
	if (!(KT_PVM_HC_FLUSH_NR(nr)))
		return 0;
	u32 tid = (u32)id;
	u64 exits = kt_rd64(vcpu + KT_OFF_VCPU_EXITS);
	u64 *last = kt_pvm_hc_exit.lookup(&tid);
	if (last && *last == exits)
		return 0;
	kt_pvm_hc_exit.update(&tid, &exits);
	kt_stat_add_pvm(1);
	struct kt_record e = {};
	kt_init(&e, KT_KIND_FLUSH_PVM_HYPERCALL, id);
	e.vcpu = (s32)kt_rd32(vcpu + KT_OFF_VCPU_ID);
	e.value = (s64)nr;
	e.need_flush = 1;
	return kt_open(&e);
}
#endif
