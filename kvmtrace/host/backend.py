"""The KVM vendor backend in use (kvm_intel, kvm_amd, kvm_pvm), whether it uses TDP, and
what a guest of it must do beyond the standard KVM x86 API: one ``Backend`` for ``doctor``,
the recorder's metadata and the built-in guest, named by its module.

A backend shows up as ``/sys/module/<name>`` (loadable or built in, once it has
parameters), as a line in ``/proc/modules`` (only with CONFIG_MODULES), and in
``/proc/kallsyms`` either as a ``[name]`` module tag or, when built in, through its
``<vendor>_vcpu_run`` symbol.

TDP (docs/design.md §2): ``/sys/module/kvm_intel/parameters/ept`` and
``/sys/module/kvm_amd/parameters/npt`` say whether two-dimensional paging is in effect (on
4.19 ``npt`` is the requested value, not the effective one).  PVM (arch/x86/kvm/pvm/)
supports only the shadow MMU, so a PVM host is always exposed to the shadow-paging bug
class.  ``kvm.tdp_mmu`` says which TDP MMU implementation is used, not whether TDP is on.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from kvmtrace.host.kallsyms import Kallsyms

BACKENDS = ("kvm_intel", "kvm_amd", "kvm_pvm")
# The vendor word the built-in guest's results use (``exercise --json`` "backend").
VENDOR = {"kvm_intel": "vmx", "kvm_amd": "svm", "kvm_pvm": "pvm"}
# A symbol every build of the backend has (its vcpu_run op), for built-in backends.
RUN_SYMBOL = {"kvm_intel": "vmx_vcpu_run", "kvm_amd": "svm_vcpu_run", "kvm_pvm": "pvm_vcpu_run"}
TDP_PARAM = {"kvm_intel": "ept", "kvm_amd": "npt"}


@dataclass(frozen=True)
class Quirks:
    """What a guest of a backend needs beyond the standard KVM x86 API.

    ``kvm_pvm`` (Pagetable-based VM) has no hardware virtualisation: a vCPU runs natively
    only in 64-bit mode with a registered "VIF" page, and every present paging entry at
    every level needs the User bit because the guest kernel really runs at CPL 3
    (docs/design.md §5)."""

    user_bit_everywhere: bool = False  # set U in every present paging entry
    vif_page: bool = False             # register a VIF page with the PVM VIF MSR


QUIRKS = {"kvm_pvm": Quirks(user_bit_everywhere=True, vif_page=True),
          "kvm_intel": Quirks(), "kvm_amd": Quirks()}


@dataclass
class Backend:
    """What kvmtrace learnt about the KVM backend."""

    name: str = ""                       # kvm_intel | kvm_amd | kvm_pvm | "" (no KVM)
    present: list[str] = field(default_factory=list)
    evidence: dict[str, list[str]] = field(default_factory=dict)
    kvm_present: bool = False            # the generic kvm module / code is there
    tdp: bool | None = None              # None: unknown
    tdp_source: str = ""                 # where the TDP answer came from

    @property
    def exposed(self) -> bool | None:
        """True when guests run on the shadow MMU (docs/design.md §2), None when unknown."""
        if not self.name:
            return None
        return None if self.tdp is None else not self.tdp

    @property
    def vendor(self) -> str:
        """vmx, svm, pvm, or unknown."""
        return VENDOR.get(self.name, "unknown")

    @property
    def module(self) -> str | None:
        return self.name or None

    @property
    def quirks(self) -> Quirks | None:
        """What the built-in guest must do on this backend; None: not supported."""
        return QUIRKS.get(self.name)

    @property
    def paging(self) -> str:
        if self.tdp is None:
            return "unknown"
        return "tdp" if self.tdp else "shadow"


def _proc_modules(root: Path) -> dict[str, int] | None:
    """name -> reference count from /proc/modules, None without module support."""
    try:
        text = (root / "proc/modules").read_text()
    except OSError:
        return None
    out: dict[str, int] = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) >= 3:
            try:
                out[parts[0]] = int(parts[2])
            except ValueError:
                out[parts[0]] = 0
    return out


def _truthy(value: str) -> bool:
    return value.strip().upper() in ("Y", "1", "TRUE")


def detect(root: Path = Path("/"), kallsyms: Kallsyms | None = None) -> Backend:
    """Find the backend(s) and the TDP state; kallsyms is loaded when not given."""
    if kallsyms is None:
        kallsyms = Kallsyms.load(root)
    modules = _proc_modules(root)
    out = Backend()
    out.kvm_present = ((root / "sys/module/kvm").is_dir() or (root / "dev/kvm").exists()
                       or bool(modules and "kvm" in modules)
                       or bool(kallsyms and kallsyms.has("kvm_vcpu_ioctl")))
    for name in BACKENDS:
        ev: list[str] = []
        if (root / "sys/module" / name).is_dir():
            ev.append(f"/sys/module/{name}")
        if modules is not None and name in modules:
            ev.append(f"/proc/modules (refcount {modules[name]})")
        if kallsyms is not None:
            if name in kallsyms.modules:
                ev.append(f"kallsyms [{name}]")
            elif kallsyms.has(RUN_SYMBOL[name]):
                ev.append(f"kallsyms {RUN_SYMBOL[name]} (built in)")
        if ev:
            out.present.append(name)
            out.evidence[name] = ev
    out.name = _choose(out.present, modules)
    out.tdp, out.tdp_source = _tdp(root, out.name)
    return out


def from_sys_module(sys_module: Path = Path("/sys/module")) -> Backend:
    """The backend from /sys/module alone (no kallsyms, no /proc), as the built-in guest
    needs it; a PVM module wins (it is the one guests get when loaded)."""
    for name in ("kvm_pvm", "kvm_intel", "kvm_amd"):
        if (sys_module / name).is_dir():
            tdp, source = ((False, "PVM has only the shadow MMU") if name == "kvm_pvm"
                           else tdp_param(sys_module, name))
            return Backend(name=name, present=[name], evidence={name: [str(sys_module / name)]},
                           kvm_present=True, tdp=tdp, tdp_source=source)
    return Backend()


def _choose(present: list[str], modules: dict[str, int] | None) -> str:
    """The backend in use: the only one, else the one whose module is in use."""
    if len(present) <= 1:
        return present[0] if present else ""
    if modules:
        used = [n for n in present if modules.get(n, 0) > 0]
        if len(used) == 1:
            return used[0]
    return present[0]


def _tdp(root: Path, backend: str) -> tuple[bool | None, str]:
    if backend == "kvm_pvm":
        return False, "PVM has only the shadow MMU"
    if backend not in TDP_PARAM:
        return None, "no KVM backend found"
    return tdp_param(root / "sys/module", backend)


def tdp_param(sys_module: Path, module: str) -> tuple[bool | None, str]:
    """Whether kvm_intel.ept / kvm_amd.npt (under ``sys_module``, i.e. /sys/module) turn TDP
    on, and where that was read; None when unknown."""
    param = TDP_PARAM.get(module)
    if param is None:
        return None, f"{module} has no TDP parameter"
    try:
        value = (sys_module / module / "parameters" / param).read_text().strip()
    except OSError:
        return None, f"/sys/module/{module}/parameters/{param} unreadable"
    return _truthy(value), f"/sys/module/{module}/parameters/{param} = {value}"
