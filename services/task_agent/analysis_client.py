"""The task agent's calls to AnalysisService, over mTLS as the `task-agent` identity: the
analysis.* task types run there."""

import grpc

from agentry.analysis.v1 import analysis_pb2, analysis_pb2_grpc
from libs.common.channels import ServiceChannel
from libs.common.grpc_errors import from_rpc_error
from libs.common.identity import AgentIdentity

# An analysis of the largest input takes a second or two; the task's own timeout (60 s by
# default) bounds the attempt anyway.
TIMEOUT_S = 60.0


class AnalysisClient:
    def __init__(self, address: str, identity: AgentIdentity | None) -> None:
        self._channel = ServiceChannel(address, "analysis", identity)

    async def run(self, kind: str, document: bytes) -> bytes:
        """The JSON output of analysis `kind` over the JSON `document`; the domain error of a
        refused call (InvalidArgument for bad input)."""
        stub = self._channel.stub(analysis_pb2_grpc.AnalysisServiceStub)
        try:
            reply = await stub.RunAnalysis(
                analysis_pb2.RunAnalysisRequest(kind=kind, input=document),
                timeout=TIMEOUT_S,
            )
        except grpc.aio.AioRpcError as exc:
            raise from_rpc_error(exc) from None
        return reply.output

    async def close(self) -> None:
        await self._channel.close()
