"""reproduce.py's parts: the stage graph (stages), the runner that launches and skips stages (runner), and the
report of the results table (report)."""
