"""``ember bench``: Ember's speed and density against floors measured in the same run."""
