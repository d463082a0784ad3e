"""``python -m ham_bench`` is the ``ham-bench`` command (also under torchrun)."""

from ham_bench.cli import main

main()
