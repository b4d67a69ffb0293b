"""The pure policy and domain core of the farm.

Standard library only: no database, Redis, Celery, FastAPI, settings or clock. Time
arrives as an argument (``now``); decisions leave as values. tests/unit/test_purity.py
imports this package in a fresh interpreter and fails if anything else got loaded.
"""
