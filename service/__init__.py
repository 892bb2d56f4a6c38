"""The shared bottom of the platform: the settings, the SQL job store and the queue
vocabulary. It imports nothing of `api/`, `workers/` or `tools/`."""
