"""The run registry: a SQLite index of the run folders under output.dir, for listing and comparing runs.

The run folders and `<output.dir>/test-usage.jsonl` (every look at a test set, append-only) stay
the source of truth; `<output.dir>/registry.sqlite` only indexes them, and is rebuilt from them.

One module per job, in reading order:
- usage.py: the test-set usage log (read, append durably, under a lock);
- store.py: the database (schema, version, connection), its index of the usage log (`record_test_use`);
- folder.py: reading one run folder into a row;
- index.py: indexing (`record`, `sync`) and queries (`list_runs`, `get_run`);
- rows.py: row-level data hashes (`write_row_hashes`, `read_row_hashes`);
- diff.py: what differs between two runs' configs and data (`config_diff`, `data_diff`);
- mirror.py: the MLflow mirror (`mirror_mlflow`).

Comparing two runs' metrics needs the evaluation stage's metrics, so `compare` itself lives in
`tuneloop.evaluate.compare_runs`, above the registry.
"""

from tuneloop.registry.diff import config_diff, data_diff, flatten
from tuneloop.registry.folder import LOOP_FILE, RUNNING_WINDOW_SECONDS, WATCHED
from tuneloop.registry.index import get_run, list_runs, record, sync
from tuneloop.registry.mirror import mirror_mlflow
from tuneloop.registry.rows import ROWS_FILE, SPLITS, read_row_hashes, row_hash, write_row_hashes
from tuneloop.registry.store import (
    LEGACY_USAGE_LOG,
    REGISTRY_FILE,
    SCHEMA_VERSION,
    record_test_use,
    registry_path,
    test_uses,
)

__all__ = [
    "LEGACY_USAGE_LOG",
    "LOOP_FILE",
    "REGISTRY_FILE",
    "ROWS_FILE",
    "RUNNING_WINDOW_SECONDS",
    "SCHEMA_VERSION",
    "SPLITS",
    "WATCHED",
    "config_diff",
    "data_diff",
    "flatten",
    "get_run",
    "list_runs",
    "mirror_mlflow",
    "read_row_hashes",
    "record",
    "record_test_use",
    "registry_path",
    "row_hash",
    "sync",
    "test_uses",
    "write_row_hashes",
]
