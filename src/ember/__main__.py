"""``python -m ember``: the same CLI as the ``ember`` command (the SDK starts daemons this way)."""

from ember.cli import main

main()
