"""The orchestrator process: the agent registry, and WorkflowService (whose RPCs answer
UNIMPLEMENTED until the workflow issue builds them)."""

from pathlib import Path

from agentry.agents.v1 import agents_pb2, agents_pb2_grpc
from agentry.workflows.v1 import workflows_pb2, workflows_pb2_grpc
from libs.common.db import create_engine
from libs.common.service import GrpcApp
from services.orchestrator.agent_store import AgentStore
from services.orchestrator.servicer import AgentRegistryServicer
from services.orchestrator.settings import OrchestratorSettings

MIGRATIONS = Path(__file__).parent / "migrations"


class OrchestratorApp(GrpcApp):
    role = "orchestrator"

    def __init__(self, settings: OrchestratorSettings) -> None:
        self._engine = create_engine(settings.database_url, pool_size=4)
        super().__init__(
            settings,
            [
                (
                    workflows_pb2_grpc.add_WorkflowServiceServicer_to_server,
                    # Answers UNIMPLEMENTED until the workflow issue (#5) builds it.
                    workflows_pb2_grpc.WorkflowServiceServicer(),  # type: ignore[abstract]
                    workflows_pb2.DESCRIPTOR.services_by_name["WorkflowService"].full_name,
                ),
                (
                    agents_pb2_grpc.add_AgentRegistryServiceServicer_to_server,
                    AgentRegistryServicer(AgentStore(self._engine)),
                    agents_pb2.DESCRIPTOR.services_by_name["AgentRegistryService"].full_name,
                ),
            ],
            MIGRATIONS,
        )

    async def close(self) -> None:
        await self._engine.dispose()
