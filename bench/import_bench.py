"""Text-import throughput and memory, as same-run ratios against two baselines.

Builds an ftrace text file of ``--lines`` lines (default 10 M) by repeating the real stress
capture (fixtures/real/exercise_4vcpu_stress.ftrace.txt.gz, 4 vCPUs of kvmtrace's exercise
guest on this PVM host) with each copy shifted a whole number of seconds later, so every
CPU's timestamps keep rising.  Then, in CPU seconds of this process (best of ``--repeat``):

- baseline ``python split``: reading the file and splitting every line in Python (the least
  a per-line Python parser can do);
- baseline ``C memchr``: a small C parser built here with ``cc`` (mmap, memchr per line, the
  CPU number and timestamp parsed), the speed of a native line parser;
- ``import``: kvmtrace's text reader (``TextReader.chunks()``, every chunk in schema
  columns), with the compiled scanner when it is built, and, with ``--pure``, without it.

With ``--rss`` it also runs ``kvmtrace analyze`` and ``kvmtrace convert`` on a 1 M- and a
10 M-line file in fresh processes under ``/usr/bin/time -v`` and prints their peak RSS.

    python3 bench/import_bench.py [--lines 10000000] [--repeat 3] [--pure] [--rss] [--keep DIR]
"""
from __future__ import annotations

import argparse
import gzip
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
FIXTURE = REPO / "fixtures" / "real" / "exercise_4vcpu_stress.ftrace.txt.gz"
TS = re.compile(rb"\] \S* *(\d+)\.\d{6}: ")

C_BASELINE = r"""
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
/* One pass over an ftrace text file: per line, memchr for the end, the "[cpu]" field and
   the "secs.usecs:" timestamp parsed; prints lines, a checksum and the CPU seconds. */
int main(int argc, char **argv) {
    int fd = open(argv[1], O_RDONLY);
    struct stat st;
    if (fd < 0 || fstat(fd, &st)) return 2;
    const char *b = mmap(0, st.st_size, PROT_READ, MAP_PRIVATE, fd, 0);
    if (b == MAP_FAILED) return 2;
    struct timespec t0, t1;
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &t0);
    const char *p = b, *end = b + st.st_size;
    long lines = 0;
    unsigned long long sum = 0;
    while (p < end) {
        const char *nl = memchr(p, '\n', end - p);
        if (!nl) nl = end;
        const char *c = memchr(p, '[', nl - p);
        if (c && *p != '#') {
            long cpu = 0;
            for (c++; c < nl && *c >= '0' && *c <= '9'; c++) cpu = cpu * 10 + *c - '0';
            const char *d = memchr(c, '.', nl - c);
            if (d) {
                const char *s = d;
                while (s > c && s[-1] >= '0' && s[-1] <= '9') s--;
                unsigned long long ts = 0;
                for (; s < nl && *s != ':'; s++) if (*s != '.') ts = ts * 10 + *s - '0';
                sum += ts + cpu;
            }
        }
        lines++;
        p = nl + 1;
    }
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &t1);
    printf("%ld %llu %.6f\n", lines, sum, (t1.tv_sec - t0.tv_sec) + (t1.tv_nsec - t0.tv_nsec) / 1e9);
    return 0;
}
"""


def build(out: Path, target_lines: int) -> int:
    """Write ``target_lines`` event lines (plus the capture's header) to ``out``."""
    raw = gzip.decompress(FIXTURE.read_bytes())
    lines = raw.split(b"\n")
    header = [l for l in lines if l.startswith(b"#") and b"entries-in-buffer" not in l]
    events = [l for l in lines if l and not l.startswith(b"#")]
    template = b"\n".join(events) + b"\n"
    secs, where, starts = [], [], []
    offset = 0
    for line in events:
        m = TS.search(line)
        secs.append(int(m.group(1)))
        where.append((offset + m.start(1), len(m.group(1))))
        starts.append(offset)
        offset += len(line) + 1
    starts.append(offset)
    width = where[0][1]
    assert all(w == width for _, w in where), "timestamps of one width expected"
    secs = np.array(secs, dtype=np.int64)
    span = int(secs.max() - secs.min()) + 1
    copies = -(-target_lines // len(events))
    assert len(str(int(secs.max()) + copies * span)) == width, "seconds would change width"
    pos = np.array([w for w, _ in where], dtype=np.int64)
    base = np.frombuffer(template, dtype=np.uint8)
    written = 0
    with open(out, "wb") as f:
        f.write(b"\n".join(header) + b"\n")
        for copy in range(copies):
            buf = base.copy()
            value = secs + copy * span
            for k in range(width):                  # the seconds digits, right to left
                buf[pos + width - 1 - k] = ord("0") + value // 10 ** k % 10
            take = min(len(events), target_lines - written)
            f.write(buf[:starts[take]].tobytes())
            written += take
    return written


def cpu(fn, *args):
    start = time.process_time()
    out = fn(*args)
    return time.process_time() - start, out


def python_split(path: Path) -> int:
    n = 0
    with open(path, "rb") as f:
        for line in f:
            line.split()
            n += 1
    return n


def run_import(path: Path, pure: bool) -> int:
    from kvmtrace.sources.text import decode as D
    from kvmtrace.sources.text.text import TextReader
    reader = TextReader(path, scan=D.py_scan if pure else None)
    reader.open()
    return sum(len(cols["ts"]) for cols, _ in reader.chunks())


def c_baseline(path: Path, tmp: Path) -> float | None:
    cc = shutil.which("cc")
    if cc is None:
        return None
    src, exe = tmp / "memchr.c", tmp / "memchr"
    src.write_text(C_BASELINE)
    subprocess.run([cc, "-O2", "-o", str(exe), str(src)], check=True)
    out = subprocess.run([str(exe), str(path)], capture_output=True, text=True, check=True)
    return float(out.stdout.split()[2])


def peak_rss(args: list[str]) -> tuple[float, str]:
    """Peak RSS (MB) of ``python3 -m kvmtrace ARGS`` in a fresh process, and its first line."""
    rss, line, _ = peak_rss_cpu(args)
    return rss, line


def peak_rss_cpu(args: list[str]) -> tuple[float, str, float]:
    """Peak RSS (MB), first line of output and CPU seconds (user + system) of
    ``python3 -m kvmtrace ARGS`` in a fresh process."""
    proc = subprocess.run(["/usr/bin/time", "-v", sys.executable, "-m", "kvmtrace", *args],
                          capture_output=True, text=True, cwd=REPO,
                          env={**os.environ, "PYTHONPATH": str(REPO)})
    kb = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", proc.stderr).group(1))
    cpu_s = sum(float(m) for m in re.findall(r"(?:User|System) time \(seconds\): ([\d.]+)",
                                              proc.stderr))
    last = (proc.stdout.strip().splitlines() or [""])[0]
    return kb / 1024, last, cpu_s


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--lines", type=int, default=10_000_000)
    ap.add_argument("--repeat", type=int, default=3, help="best of N runs")
    ap.add_argument("--pure", action="store_true", help="also time the pure-Python scanner")
    ap.add_argument("--rss", action="store_true", help="peak RSS of analyze/convert, 1 M and 10 M lines")
    ap.add_argument("--keep", type=Path, help="write the generated files into this directory")
    args = ap.parse_args()
    from kvmtrace.sources.text import decode as D
    with tempfile.TemporaryDirectory() as tmp_s:
        tmp = Path(tmp_s)
        where = args.keep or tmp
        where.mkdir(parents=True, exist_ok=True)
        path = where / f"stress_{args.lines}.ftrace.txt"
        n = build(path, args.lines)
        size = path.stat().st_size
        print(f"lines            {n:,} ({size / 1e6:.0f} MB; compiled scanner "
              f"{'built' if D.FAST_SCAN else 'NOT built: pure Python'})")
        base = min(cpu(python_split, path)[0] for _ in range(args.repeat))
        cbase = [c_baseline(path, tmp) for _ in range(args.repeat)]
        runs = [cpu(run_import, path, False) for _ in range(args.repeat)]
        took = min(t for t, _ in runs)
        rows = runs[0][1]
        print(f"rows             {rows:,}")
        print(f"python split     {n / base / 1e6:8.2f} M lines/s  ({base:.2f} s CPU)")
        if cbase[0] is not None:
            cb = min(cbase)
            print(f"C memchr         {n / cb / 1e6:8.2f} M lines/s  ({cb:.2f} s CPU)")
        print(f"import           {n / took / 1e6:8.2f} M lines/s  ({took:.2f} s CPU; runs "
              + ", ".join(f"{n / t / 1e6:.2f}" for t, _ in runs) + ")")
        print(f"import / python split  {base / took:6.2f}x")
        if cbase[0] is not None:
            print(f"import / C memchr      {min(cbase) / took:6.3f}x")
        if args.pure:
            t, _ = cpu(run_import, path, True)
            print(f"import, pure Python    {n / t / 1e6:8.2f} M lines/s ({t:.1f} s CPU); "
                  f"compiled / pure {t / took:.1f}x")
        if args.rss:
            for lines in (1_000_000, 10_000_000):
                p = where / f"stress_{lines}.ftrace.txt"
                if not p.exists():
                    build(p, lines)
                rss, verdict = peak_rss(["analyze", str(p)])
                print(f"analyze {lines // 1_000_000:>2} M lines: peak RSS {rss:6.0f} MB  ({verdict})")
                out = where / f"stress_{lines}.parquet"
                rss, _ = peak_rss(["convert", str(p), "-o", str(out)])
                print(f"convert {lines // 1_000_000:>2} M lines: peak RSS {rss:6.0f} MB")
                out.unlink(missing_ok=True)
                rss, _, cpu_s = peak_rss_cpu(["show", str(p)])
                print(f"show    {lines // 1_000_000:>2} M lines: peak RSS {rss:6.0f} MB  "
                      f"({cpu_s:.1f} s CPU)")


if __name__ == "__main__":
    main()
