"""The data stage: read → validate → clean → redact → dedup → length → split → report.

`prepare.prepare()` runs it; `render.Renderer` is the one place that decides which tokens train.
"""
