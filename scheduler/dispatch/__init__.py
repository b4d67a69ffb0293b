"""The scheduler process: its loop, the leader lock, dispatching, ingesting node events,
reconciling with the world, and its metrics."""
