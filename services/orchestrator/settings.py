from libs.common.settings import GrpcServerSettings


class OrchestratorSettings(GrpcServerSettings):
    grpc_port: int = 50052
    task_service_address: str = "127.0.0.1:50051"
    analysis_service_address: str = "127.0.0.1:50053"
