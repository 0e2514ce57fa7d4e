"""Processes and the host: the one command runner, signals, reaping, locks, QEMU, secrets."""
