"""`python -m mams`: the same as the `mams` command."""

from mams.cli import main

main()
