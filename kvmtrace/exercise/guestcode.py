"""The guest's code: a tiny interpreter of the per-vCPU control block, hand-assembled.

Each vCPU runs the same 213 bytes with ``rbx`` = its control block.  One pass does, in
order: a CR3 load when the control block names one (``--address-spaces``: a switch to
another page-table tree; on a shadow-MMU host KVM emulates or intercepts it and
``kvm_set_cr3()`` -> ``kvm_mmu_new_pgd()`` reuses a cached root from ``prev_roots``
without any tracepoint, arch/x86/kvm/mmu/mmu.c ``fast_pgd_switch()``), the control block's list of 64-bit
stores (the writer's PTE rewrites), its list of
``lock or byte [addr], KVM_VCPU_FLUSH_TLB`` (the writer's flush requests, as Linux's
``kvm_flush_tlb_multi()`` sets them with a cmpxchg on a preempted target's steal-time
``preempted`` byte), the flush op of ``flushvia.py`` if one is set
(a PVM hypercall, MOV to CR3 or CR4, or INVLPG of each address it is about to read), its
list of 64-bit reads through the current translation (the
readers), whose values go to the results array; then ``out PARK_PORT, al``.  OUT is a
privileged instruction every backend traps and KVM hands to user space as KVM_EXIT_IO, so
the vCPU parks in the VMM between passes, exactly where a preempted vCPU sits.

The bytes were produced by GNU as (``as --64``, Intel syntax) from the source in the
comments; tests/test_exercise_layout.py re-assembles the source when ``as`` is installed
and checks every branch lands on an instruction boundary either way.
"""
from __future__ import annotations

# Control block layout (offsets from rbx).
CTL_NSTORES = 0x00           # u64 number of (address, value) stores
CTL_NFLAGS = 0x08            # u64 number of flag addresses
CTL_NREADS = 0x10            # u64 number of read addresses
CTL_CR3 = 0x18               # u64 CR3 to load at the start of the pass (0 = keep)
CTL_FLUSH_OP = 0x20          # u64 flush op before the reads (flushvia.py; 0 = none)
CTL_FLUSH_ARGS = 0x28        # u64 x3: op arguments (rax, rdi, rsi for a hypercall)
CTL_FLUSH_RET = 0x40         # u64 the hypercall's return value (rax)
CTL_STORES = 0x100           # (u64 address, u64 value) pairs
CTL_FLAGS = 0x900            # u64 addresses of steal-time `preempted` bytes
CTL_READS = 0xB00            # u64 addresses to read
CTL_RESULTS = 0x1000         # u64 values read, in order
MAX_STORES = (CTL_FLAGS - CTL_STORES) // 16
MAX_FLAGS = (CTL_READS - CTL_FLAGS) // 8
MAX_READS = min((CTL_RESULTS - CTL_READS) // 8, 0x1000 // 8)

PARK_PORT = 0x10

# (bytes, assembly).  Labels: top, 7 = after the CR3 load, 1 = store loop, 2/3 = flag
# loop, 4 = flush step (flushvia.py: 12/13/14 its ops, 11 the INVLPG loop), 10/5 =
# read loop, 6 = park.
INSTRUCTIONS: tuple[tuple[str, str], ...] = (
    ("488b4318",       "top: mov rax, [rbx+0x18]      ; CR3 to load, 0 = none"),
    ("4885c0",         "     test rax, rax"),
    ("7403",           "     jz 7f"),
    ("0f22d8",         "     mov cr3, rax             ; switch page-table tree"),
    ("488b0b",         "7:   mov rcx, [rbx+0x00]      ; n_stores"),
    ("488db300010000", "     lea rsi, [rbx+0x100]     ; -> (address, value) pairs"),
    ("e313",           "1:   jrcxz 2f"),
    ("488b06",         "     mov rax, [rsi]           ; address (a PTE)"),
    ("488b5608",       "     mov rdx, [rsi+8]         ; value"),
    ("488910",         "     mov [rax], rdx           ; the PTE write: KVM unsyncs its shadow page"),
    ("4883c610",       "     add rsi, 16"),
    ("48ffc9",         "     dec rcx"),
    ("ebeb",           "     jmp 1b"),
    ("488b4b08",       "2:   mov rcx, [rbx+0x08]      ; n_flags"),
    ("488db300090000", "     lea rsi, [rbx+0x900]     ; -> steal-time preempted bytes"),
    ("e310",           "3:   jrcxz 4f"),
    ("488b06",         "     mov rax, [rsi]"),
    ("f0800802",       "     lock or byte ptr [rax], 2 ; preempted |= KVM_VCPU_FLUSH_TLB"),
    ("4883c608",       "     add rsi, 8"),
    ("48ffc9",         "     dec rcx"),
    ("ebee",           "     jmp 3b"),
    ("488b4320",       "4:   mov rax, [rbx+0x20]      ; flush op (flushvia.py), 0 = none"),
    ("3c01",           "     cmp al, 1"),
    ("751a",           "     jne 12f"),
    ("4989df",         "     mov r15, rbx             ; 1: PVM hypercall: int 0x1b, number in rax"),
    ("488b4328",       "     mov rax, [rbx+0x28]"),
    ("488b7b30",       "     mov rdi, [rbx+0x30]"),
    ("488b7338",       "     mov rsi, [rbx+0x38]"),
    ("cd1b",           "     int 0x1b"),
    ("4c89fb",         "     mov rbx, r15"),
    ("48894340",       "     mov [rbx+0x40], rax      ; the hypercall's return value"),
    ("eb3a",           "     jmp 10f"),
    ("3c02",           "12:  cmp al, 2"),
    ("7509",           "     jne 13f"),
    ("488b4328",       "     mov rax, [rbx+0x28]      ; 2: MOV to CR3"),
    ("0f22d8",         "     mov cr3, rax"),
    ("eb2d",           "     jmp 10f"),
    ("3c03",           "13:  cmp al, 3"),
    ("7509",           "     jne 14f"),
    ("488b4328",       "     mov rax, [rbx+0x28]      ; 3: MOV to CR4"),
    ("0f22e0",         "     mov cr4, rax"),
    ("eb20",           "     jmp 10f"),
    ("3c04",           "14:  cmp al, 4"),
    ("751c",           "     jne 10f"),
    ("488b4b10",       "     mov rcx, [rbx+0x10]      ; 4: INVLPG every address about to be read"),
    ("488db3000b0000", "     lea rsi, [rbx+0xb00]"),
    ("e30f",           "11:  jrcxz 10f"),
    ("488b06",         "     mov rax, [rsi]"),
    ("0f0138",         "     invlpg [rax]"),
    ("4883c608",       "     add rsi, 8"),
    ("48ffc9",         "     dec rcx"),
    ("ebef",           "     jmp 11b"),
    ("488b4b10",       "10:  mov rcx, [rbx+0x10]      ; n_reads"),
    ("488db3000b0000", "     lea rsi, [rbx+0xb00]     ; -> addresses to read"),
    ("488dbb00100000", "     lea rdi, [rbx+0x1000]    ; -> results"),
    ("e316",           "5:   jrcxz 6f"),
    ("488b06",         "     mov rax, [rsi]           ; a remapped virtual address"),
    ("488b00",         "     mov rax, [rax]           ; read through the current translation"),
    ("488907",         "     mov [rdi], rax           ; report it"),
    ("4883c608",       "     add rsi, 8"),
    ("4883c708",       "     add rdi, 8"),
    ("48ffc9",         "     dec rcx"),
    ("ebe8",           "     jmp 5b"),
    ("e610",           "6:   out 0x10, al             ; park: KVM_EXIT_IO to the VMM"),
    ("e92bffffff",     "     jmp top"),
)

CODE = b"".join(bytes.fromhex(h) for h, _ in INSTRUCTIONS)


def assembly_source() -> str:
    """The GNU as source (Intel syntax) the bytes came from."""
    lines = [".intel_syntax noprefix", ".code64"]
    for _, asm in INSTRUCTIONS:
        lines.append(asm.split(";")[0].rstrip())
    return "\n".join(lines) + "\n"
