"""`tuneloop monitor`: logged traffic against the training data (drift, output signals, feedback, latency).

drift.py    the statistics: input-length KS test, new terms, embedding MMD permutation test
signals.py  output signals per day, feedback rates, latency percentiles
embed.py    sentence embeddings (MiniLM) and input lengths (the project's tokenizer)
analyze.py  everything together, the alerts the `monitor:` thresholds raise, `run` for the CLI
report.py   report-<time>.json and the HTML report (report.html.j2)
export.py   `monitor export`: corrected traffic → training records for `data prepare`; thumbs-down → review
"""
