"""The API's routers: jobs (studio), nodes (farm), system (health and metrics)."""
