"""The benchmark suite: hyperloss beside the paper's code and what users write instead.

- ``cases``: the implementations compared, their inputs, one timed step, and the counted work of each case.
- ``plan``: which cases a sweep runs (the default sweep for the device found, or the CLI's choices).
- ``runner``: runs each case in a child process (time limit, out-of-memory and peak-memory accounting).
- ``report``: the terminal table, the JSON / CSV / Markdown files and the PNG plots.

Run it with ``python -m hyperloss.bench`` (or ``hyperloss-bench``); ``--help`` lists the options.
This package imports nothing heavy at import time, so the child processes start fast.
"""
