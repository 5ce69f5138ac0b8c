"""Ember's HTTP API: a FastAPI app over the engine, and the daemon that serves it."""

from ember.server.app import create_app
from ember.server.daemon import serve

__all__ = ["create_app", "serve"]
