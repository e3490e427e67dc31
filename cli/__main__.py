"""`python -m cli ...`: the `skillkd` command (how `skillkd serve` starts its worker)."""

from cli import main

main()
