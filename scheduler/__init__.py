"""renderfarm's scheduler side: the pure core, the store, the wire to the nodes, the
scheduler process, the use cases and the launchers (see each subpackage)."""

__version__ = "0.1.0"
