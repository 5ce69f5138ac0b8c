"""Ember inside agent frameworks; each integration needs its own extra (``ember[mcp]``, ``ember[agents]``)."""
