"""Where the agent works and keeps its own state; overridable to run it outside a VM in tests."""

from __future__ import annotations

import os
from pathlib import Path

from ember.agent.image import IMAGE
from ember.protocol.messages import DEFAULT_WORKDIR

WORKDIR = os.environ.get("EMBER_AGENT_WORKDIR") or IMAGE.workdir or DEFAULT_WORKDIR
STATE_DIR = Path(os.environ.get("EMBER_AGENT_STATE_DIR", "/run/ember"))
