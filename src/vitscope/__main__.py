"""`python -m vitscope ...` (also what torchrun launches)."""
from vitscope.cli.main import main

main()
