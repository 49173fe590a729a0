"""The evaluation stage: task metrics, base-vs-tuned comparison and reports."""
