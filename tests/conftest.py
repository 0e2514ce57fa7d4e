"""tests/infra holds testinfra suites that run inside built VMs (imageforge verify), not here."""

collect_ignore = ["infra"]
