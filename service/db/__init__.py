"""The database layer shared by the API and the workers: models, engines, and small
keyword-only functions that take a session."""
