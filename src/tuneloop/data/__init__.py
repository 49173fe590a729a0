"""The data stage: read → validate → clean → redact → dedup → length → split → report.

`prepare.prepare()` runs it; `render.Renderer` is the one place that decides which tokens train.
`prepared.load_split()` reads what prepare wrote; `batching.Collator` turns rendered examples into
batches, for training and evaluation alike.
"""
