"""A scripted OpenAI Agents SDK run whose sandbox is the Agents SDK's own E2B client, pointed at Ember.

The model is ``agents.testing.ScriptedModel`` (no network, no key): it asks for
one shell command and one file write through the sandbox tools, then answers.
Everything the tools do happens in an Ember microVM reached through E2B's SDK.
"""

from __future__ import annotations

import json

from agents import RunConfig, Runner
from agents.extensions.sandbox.e2b import E2BSandboxClient, E2BSandboxClientOptions
from agents.run_config import SandboxRunConfig
from agents.sandbox import SandboxAgent
from agents.testing import ScriptedModel, assistant_message, function_call
from e2b import AsyncSandbox


def _tool_outputs(call_input: object) -> list[str]:
    items = call_input if isinstance(call_input, list) else []
    return [
        str(item.get("output"))
        for item in items
        if isinstance(item, dict) and item.get("type") == "function_call_output"
    ]


async def test_scripted_agent_runs_commands_in_an_ember_sandbox(e2b_env: dict[str, str]) -> None:
    command = "uname -n; echo $((6 * 7)) | tee /tmp/answer.txt"
    model = ScriptedModel(
        [
            [function_call("exec_command", {"cmd": command}, call_id="call-1")],
            [assistant_message("The answer is 42.")],
        ]
    )
    agent = SandboxAgent(name="calculator", instructions="Use the shell.", model=model)
    options = E2BSandboxClientOptions(sandbox_type="e2b", timeout=600, metadata={"agent": "calculator"})
    sandbox = SandboxRunConfig(client=E2BSandboxClient(), options=options)
    config = RunConfig(sandbox=sandbox, tracing_disabled=True)  # no trace export: no network

    result = await Runner.run(agent, "What is six times seven?", run_config=config)

    assert result.final_output == "The answer is 42."
    assert model.remaining_steps == 0
    outputs = _tool_outputs(model.calls[1].input)
    assert outputs and "42" in outputs[0] and "ember-" in outputs[0], json.dumps(outputs)
    # The run ended its sandbox: nothing of this agent is left on the daemon, running or paused.
    left = [s for s in await AsyncSandbox.list().next_items() if s.metadata.get("agent") == "calculator"]
    assert not left, left
