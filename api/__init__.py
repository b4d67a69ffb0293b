"""The studio-facing REST API (FastAPI), its schemas, authentication and /metrics."""
