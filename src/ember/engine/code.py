"""Running code in a sandbox's REPL contexts (``sandbox.code``)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ember.engine.calls import OutputCallback, OutputCollector, drive
from ember.protocol import messages as m

if TYPE_CHECKING:
    from ember.engine.sandbox import Sandbox


class Code:
    def __init__(self, sandbox: Sandbox) -> None:
        self._sandbox = sandbox

    async def run(
        self,
        code: str,
        *,
        language: str = "python",
        context_id: str | None = None,
        timeout_s: float | None = None,
        env: dict[str, str] | None = None,
        on_stdout: OutputCallback | None = None,
        on_stderr: OutputCallback | None = None,
        scratch: bool = False,
    ) -> m.Execution:
        """Run a cell; stdout/stderr stream to the callbacks and are collected in the result.

        ``scratch`` runs it where it leaves no variables and no execution count.
        """
        request = m.RunCode(
            code=code, language=language, context_id=context_id, timeout_s=timeout_s, env=env, scratch=scratch
        )
        collector = OutputCollector(on_stdout, on_stderr)
        async with self._sandbox.agent_call() as agent:
            result = await drive(agent, request, collector.drain, timeout_s)
        execution = m.Execution.from_wire(result)
        execution.stdout, execution.stderr = collector.stdout, collector.stderr
        return execution

    async def create_context(self, language: str = "python", cwd: str | None = None) -> m.ContextInfo:
        async with self._sandbox.agent_call() as agent:
            return m.ContextInfo.from_wire(await agent.request(m.ContextCreate(language=language, cwd=cwd)))

    async def list_contexts(self) -> list[m.ContextInfo]:
        async with self._sandbox.agent_call() as agent:
            return m.ContextListing.from_wire(await agent.request(m.ContextList())).contexts

    async def delete_context(self, context_id: str) -> None:
        async with self._sandbox.agent_call() as agent:
            await agent.request(m.ContextDelete(context_id=context_id))

    async def restart_context(self, context_id: str) -> m.ContextInfo:
        async with self._sandbox.agent_call() as agent:
            return m.ContextInfo.from_wire(await agent.request(m.ContextRestart(context_id=context_id)))
