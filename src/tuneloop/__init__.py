"""tuneloop: define → data → train → evaluate → deploy → monitor → iterate."""

__version__ = "0.1.0"
