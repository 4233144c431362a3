"""The benchmark (``python -m hyperloss.bench``). Modules, each importing only earlier ones: ``cases`` (what runs),
``fmt`` (numbers, titles), ``roofline`` (work, floors, ceilings), ``isolation`` (a child process per case), ``sweep``
(which cases, timed by torch's or Triton's timer), ``plots`` (matplotlib), ``report`` (document, tables, files)."""
