"""The API's routers: jobs and templates (studio), nodes (farm), system (health and metrics)."""
