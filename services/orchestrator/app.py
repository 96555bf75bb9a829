"""The orchestrator process: WorkflowService and AgentRegistryService. Their RPCs answer
UNIMPLEMENTED until the workflow issue builds them; the process, its schema and its health
are in place."""

from pathlib import Path

from agentry.agents.v1 import agents_pb2, agents_pb2_grpc
from agentry.workflows.v1 import workflows_pb2, workflows_pb2_grpc
from libs.common.service import GrpcApp
from services.orchestrator.settings import OrchestratorSettings

MIGRATIONS = Path(__file__).parent / "migrations"


class OrchestratorApp(GrpcApp):
    role = "orchestrator"

    def __init__(self, settings: OrchestratorSettings) -> None:
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
                    agents_pb2_grpc.AgentRegistryServiceServicer(),  # type: ignore[abstract]
                    agents_pb2.DESCRIPTOR.services_by_name["AgentRegistryService"].full_name,
                ),
            ],
            MIGRATIONS,
        )
