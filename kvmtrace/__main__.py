from kvmtrace.cli import main

main()
