"""deploy/systemd: the service and timer pass `systemd-analyze verify`, a broken copy does
not, the service runs the check command kvmtrace really accepts, and (live) the check
passes inside the unit's capability set on a read-only file system."""
from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from live_support import kvm_unavailable_reason
from prom_lint import samples

REPO = Path(__file__).resolve().parent.parent
UNITS = REPO / "deploy" / "systemd"
SERVICE = UNITS / "kvmtrace-check.service"
TIMER = UNITS / "kvmtrace-check.timer"
PROM = "/var/lib/node_exporter/textfile_collector/kvmtrace.prom"
SYSTEMD_ANALYZE = shutil.which("systemd-analyze")
NO_ANALYZE = "systemd-analyze is not installed (Debian's systemd package has it)"
UNSHARE, SETPRIV = shutil.which("unshare"), shutil.which("setpriv")
KVM_REASON = kvm_unavailable_reason()


def parse_unit(path: Path) -> dict[str, dict[str, list[str]]]:
    """Section -> key -> values (a key may repeat), comments and blank lines dropped."""
    out: dict[str, dict[str, list[str]]] = {}
    section = None
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            section = out.setdefault(line.strip("[]"), {})
            continue
        key, _, value = line.partition("=")
        assert section is not None, f"{path.name}: {line!r} outside a section"
        section.setdefault(key.strip(), []).append(value.strip())
    return out


def _copy(tmp_path: Path, service_edit=None, timer_edit=None) -> list[str]:
    """Both units in tmp_path, ExecStart pointing at an executable stand-in for kvmtrace
    (verify insists that ExecStart's binary exists)."""
    fake = tmp_path / "bin" / "kvmtrace"
    fake.parent.mkdir()
    fake.write_text("#!/bin/sh\nexit 0\n")
    fake.chmod(0o755)
    units = tmp_path / "units"
    units.mkdir()
    service = SERVICE.read_text().replace("ExecStart=/usr/local/bin/kvmtrace ",
                                          f"ExecStart={fake} ")
    assert str(fake) in service
    timer = TIMER.read_text()
    (units / SERVICE.name).write_text(service_edit(service) if service_edit else service)
    (units / TIMER.name).write_text(timer_edit(timer) if timer_edit else timer)
    return [str(units / SERVICE.name), str(units / TIMER.name)]


def _verify(paths: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run([str(SYSTEMD_ANALYZE), "verify", *paths], capture_output=True,
                          text=True, timeout=120)


@pytest.mark.skipif(SYSTEMD_ANALYZE is None, reason=NO_ANALYZE)
def test_the_units_verify_without_a_word(tmp_path: Path) -> None:
    proc = _verify(_copy(tmp_path))
    assert proc.returncode == 0 and proc.stdout + proc.stderr == "", proc.stdout + proc.stderr


BROKEN = {
    "missing binary": (lambda s: s.replace("ExecStart=/", "ExecStart=/nonexistent/"), None),
    "bad type": (lambda s: s.replace("Type=oneshot", "Type=oneshott"), None),
    "misspelt key": (lambda s: s.replace("ProtectSystem=strict", "ProtectSistem=strict"), None),
    "bad calendar": (None, lambda s: s.replace("OnCalendar=hourly", "OnCalendar=hourlyy")),
    "bad delay": (None, lambda s: s.replace("RandomizedDelaySec=45min",
                                            "RandomizedDelaySec=45 fortnights")),
}


@pytest.mark.skipif(SYSTEMD_ANALYZE is None, reason=NO_ANALYZE)
@pytest.mark.parametrize("what", list(BROKEN))
def test_a_broken_copy_does_not_verify(tmp_path: Path, what: str) -> None:
    """The verification above can fail: each of these breakages is reported."""
    service_edit, timer_edit = BROKEN[what]
    proc = _verify(_copy(tmp_path, service_edit, timer_edit))
    assert proc.returncode != 0 or proc.stdout + proc.stderr != ""


def test_the_service_runs_a_check_kvmtrace_accepts() -> None:
    import click

    from kvmtrace.cli import cli
    from kvmtrace.commands.check import check
    svc = parse_unit(SERVICE)["Service"]
    assert svc["Type"] == ["oneshot"]
    (exec_start,) = svc["ExecStart"]
    argv = shlex.split(exec_start)
    assert argv[0] == "/usr/local/bin/kvmtrace" and argv[1] == "check"
    # parsed under the real group's context: click caches a command's help option from
    # the first context it sees, so a bare make_context would lose the group's -h
    parent = click.Context(cli, info_name="kvmtrace", **cli.context_settings)
    params = check.make_context("check", argv[2:], parent=parent).params
    assert params["exercise"] is True and params["prom_file"] == PROM
    prom_dir = os.path.dirname(PROM)
    # writable inside ProtectSystem=strict, and created when missing
    assert f"-{prom_dir}" in " ".join(svc["ReadWritePaths"]).split()
    assert any(prom_dir in cmd for cmd in svc["ExecStartPre"])
    # the program cache (progcache.default_dir() for root) stays writable, root's alone
    assert svc["CacheDirectory"] == ["kvmtrace"] and svc["CacheDirectoryMode"] == ["0700"]


def test_the_timer_spreads_a_fleet_and_catches_up() -> None:
    timer = parse_unit(TIMER)
    t = timer["Timer"]
    assert t["Persistent"] == ["true"] and t["OnCalendar"]
    m = re.fullmatch(r"(\d+)min", t["RandomizedDelaySec"][0])
    assert m and int(m.group(1)) > 0
    assert timer["Install"]["WantedBy"] == ["timers.target"]
    assert TIMER.stem == SERVICE.stem          # the timer starts the service of its name


PRIVILEGES = ("User", "CapabilityBoundingSet", "LimitMEMLOCK", "DeviceAllow",
              "ReadWritePaths", "ExecStartPre")


def test_every_privilege_says_why() -> None:
    """Each directive that grants something has a comment right above it (or above the
    directive group it belongs to)."""
    lines = SERVICE.read_text().splitlines()
    for key in PRIVILEGES:
        (i,) = [n for n, line in enumerate(lines) if line.startswith(f"{key}=")]
        above = lines[max(0, i - 3):i]
        assert any(line.startswith("#") for line in above), f"{key}= has no comment"


def _bounding_set() -> str:
    caps = parse_unit(SERVICE)["Service"]["CapabilityBoundingSet"][0].split()
    return ",".join(["-all"] + [f"+{c.lower().removeprefix('cap_')}" for c in caps])


# $1: the textfile directory, kept writable; then the command.  PrivateTmp=yes: fresh
# tmpfs on /tmp and /var/tmp (the textfile directory moved along when it is under /tmp).
# $1: the textfile directory (stays writable); $2: the checkout (stays readable, read-only,
# also when it lives under /tmp: CI may clone there); then the command.  PrivateTmp=yes:
# fresh /tmp and /var/tmp; the two kept paths are moved aside and back over them.
SANDBOX = """set -e
mount --make-rslave /
textfile="$1"; repo="$2"; shift 2
stage="/run/kvmtrace-sandbox.$$"
mkdir -p "$stage"; mount -t tmpfs tmpfs "$stage"
for p in "$textfile" "$repo"; do
  mount --bind "$p" "$p"; mkdir -p "$stage$p"; mount --move "$p" "$stage$p"
done
mount -t tmpfs tmpfs /tmp
mount -t tmpfs tmpfs /var/tmp
for p in "$textfile" "$repo"; do
  mkdir -p "$p"; mount --move "$stage$p" "$p"
done
for m in $(findmnt -rn -o TARGET | sort -u); do
  case "$m" in "$textfile"|/tmp|/var/tmp|/proc|/proc/*|/dev|/dev/*) ;;
    *) mount -o remount,bind,ro "$m" 2>/dev/null || true;; esac
done
exec "$@"
"""


@pytest.mark.live
@pytest.mark.skipif(KVM_REASON is not None, reason=f"the unit's sandbox: {KVM_REASON}")
@pytest.mark.skipif(UNSHARE is None or SETPRIV is None,
                    reason="unshare and setpriv (util-linux) are needed to emulate the unit")
def test_the_check_passes_inside_the_units_privileges(tmp_path: Path) -> None:
    """What systemd would do, emulated without systemd: only the unit's capability
    bounding set, every mount read-only but the textfile directory (ProtectSystem=strict,
    ProtectKernelTunables=yes: /sys and tracefs too), no new privileges."""
    promdir = tmp_path / "textfile"
    promdir.mkdir()
    prom = promdir / "kvmtrace.prom"
    probe = ("! touch /usr/.kvmtrace-probe 2>/dev/null && ! touch /sys/kernel/.kvmtrace-probe "
             f"2>/dev/null && touch /tmp/probe && touch {promdir}/probe")
    ro = subprocess.run([str(UNSHARE), "-m", "sh", "-c", SANDBOX, "sandbox", str(promdir), str(REPO),
                         "sh", "-c", probe], capture_output=True, text=True, timeout=60)
    assert ro.returncode == 0, f"the emulated sandbox is not what it claims: {ro.stderr}"
    (promdir / "probe").unlink()
    proc = subprocess.run(
        [str(UNSHARE), "-m", "sh", "-c", SANDBOX, "sandbox", str(promdir), str(REPO),
         str(SETPRIV), "--no-new-privs", "--bounding-set", _bounding_set(), "--",
         sys.executable, "-m", "kvmtrace", "check", "--exercise", "--prom", str(prom)],
        capture_output=True, text=True, timeout=300, env={**os.environ, "PYTHONPATH": str(REPO)},
        cwd=REPO)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert samples(prom.read_text())[("kvmtrace_check_verdict", (("verdict", "pass"),))] == 1
    # and the emulation does bite: with no capability at all the check cannot trace
    none = subprocess.run(
        [str(UNSHARE), "-m", "sh", "-c", SANDBOX, "sandbox", str(promdir), str(REPO),
         str(SETPRIV), "--bounding-set", "-all", "--", sys.executable, "-m", "kvmtrace",
         "check", "--exercise", "--prom", str(prom)],
        capture_output=True, text=True, timeout=300, env={**os.environ, "PYTHONPATH": str(REPO)},
        cwd=REPO)
    assert none.returncode == 4, none.stdout + none.stderr
    # ... and says which capabilities are missing, not "check the kernel headers"
    assert "CAP_BPF" in none.stderr and "kernel headers" not in none.stderr, none.stderr
    assert samples(prom.read_text())[("kvmtrace_check_verdict", (("verdict", "error"),))] == 1


@pytest.mark.skipif(SYSTEMD_ANALYZE is None, reason=NO_ANALYZE)
def test_the_hardening_stays(tmp_path: Path) -> None:
    """`systemd-analyze security` rates the unit 4.1 of 10 ("OK"); an unhardened unit is
    9.6.  Dropping a protection pushes it over 4.5 (the threshold is in tenths)."""
    service, _ = _copy(tmp_path)

    def rated(path: str) -> int:
        return subprocess.run([str(SYSTEMD_ANALYZE), "security", "--offline=true",
                               "--threshold=45", path], capture_output=True, text=True,
                              timeout=120).returncode
    assert rated(service) == 0
    text = Path(service).read_text()
    weaker = Path(service).with_name("weaker.service")
    weaker.write_text(text.replace("ProtectSystem=strict", "ProtectSystem=no")
                      .replace("CapabilityBoundingSet=CAP_SYS_ADMIN CAP_BPF CAP_PERFMON",
                               "CapabilityBoundingSet=~"))
    assert rated(str(weaker)) != 0
