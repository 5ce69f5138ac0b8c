"""Adapters that let agent frameworks use Ember sandboxes; each needs its own optional extra."""
