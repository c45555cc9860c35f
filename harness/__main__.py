"""`python -m flowarena.harness` is `bench` (how the launcher starts its workers)."""

from flowarena.harness.cli import main

main()
