"""The analysis side of ham-bench: from run dirs to the paper's tables, plots and rankings.

- ``runs``: find, read and group the runs of a sweep (seeds pooled);
- ``labels``: method labels in the paper's spelling and its row order;
- ``tables``: the dense and sparse tables (wide and detail layouts);
- ``paper``: the published numbers printed beside ours;
- ``report``: ``make_tables`` (markdown and CSV files, runs not in the means);
- ``plots``: sign flips per epoch and accuracy against sparsity;
- ``ranking``: the HAM alpha/beta choice on a validation sweep;
- ``implicit_bias``: the underdetermined linear-regression experiment.

The command lines are ``scripts/make_tables.py``, ``scripts/plot_sign_flips.py``,
``scripts/rank_ham_sweep.py`` and ``scripts/implicit_bias.py``. Every file is written through
``ham_bench.atomic_io``.
"""
