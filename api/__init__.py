"""The HTTP service: FastAPI app, routes, request/response schemas, dependencies."""
