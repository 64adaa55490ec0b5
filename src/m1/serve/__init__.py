"""`m1 serve`: exact thinking budgets behind an OpenAI-compatible chat endpoint (README: Serving)."""
from m1.serve.config import ServeConfig
from m1.serve.service import Reply, Service

__all__ = ["ServeConfig", "Service", "Reply", "make_app"]


def make_app(service: Service):
    """The FastAPI application for `service` (imported here lazily: FastAPI loads only to serve)."""
    from m1.serve.app import make_app as make

    return make(service)
