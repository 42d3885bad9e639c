"""The site's HTTP API (FastAPI on uvicorn): intake, reads, officer queue, health and metrics."""
