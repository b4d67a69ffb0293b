"""The use cases of studios and operators (jobs, studios, limits, billing, progress,
regions): one transaction each, over the database; the API and the CLI call them."""
