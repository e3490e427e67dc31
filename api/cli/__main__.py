"""`python -m api.cli ...` (how `skillkd serve` starts its worker)."""

from api.cli import main

main()
