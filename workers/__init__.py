"""Celery workers: the app, thin tasks that call gistnet/ and record state in the database."""
