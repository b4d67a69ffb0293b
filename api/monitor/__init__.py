"""The web monitor's page, script and style: static files served by the API process
(api/routes/monitor.py); no build step, no framework."""
