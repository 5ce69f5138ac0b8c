"""Sandbox networks on the host: policies (``policy``, pure, shared with the SDK), namespaces and
rules (``host``), DNS (``resolver``), the name-checked proxy (``proxy``), and ``networks`` tying them
to sandboxes. Import the module you need: the package itself loads nothing.
"""
