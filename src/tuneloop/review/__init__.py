"""The human review stage: reviews of model outputs by people, stored in SQLite and served as web pages.

One module per job, in reading order:
- store.py: the database (reviews, items, reviewers, ratings) and who sees which item;
- create.py: a review from an evaluation's answers or from any JSONL of outputs;
- ratings.py: what a reviewer may submit, and letters resolved to systems;
- app.py + templates/: the web app;
- results.py: win rate, rubric means, flags, agreement, with intervals;
- export.py: CSV, corrections as training rows, rankings as `ranked` rows.
"""
