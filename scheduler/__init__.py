"""renderfarm's brain: the pure core, the store, the service layer and the dispatch loop."""

__version__ = "0.1.0"
