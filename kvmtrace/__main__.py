from kvmtrace.cli import console

console()
