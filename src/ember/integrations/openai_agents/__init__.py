"""Ember sandboxes for the OpenAI Agents SDK (``pip install 'ember[agents]'``).

``SandboxAgent`` runs in an Ember microVM with
``RunConfig(sandbox=SandboxRunConfig(client=EmberSandboxClient()))``; the
options (``EmberSandboxClientOptions``) choose the template, size and lifetime.
"""

from ember.integrations.openai_agents.client import EmberSandboxClient
from ember.integrations.openai_agents.options import EmberSandboxClientOptions
from ember.integrations.openai_agents.session import EmberSandboxSession
from ember.integrations.openai_agents.state import EmberSandboxSessionState

__all__ = [
    "EmberSandboxClient",
    "EmberSandboxClientOptions",
    "EmberSandboxSession",
    "EmberSandboxSessionState",
]
