from libs.common.settings import GrpcServerSettings


class AnalysisSettings(GrpcServerSettings):
    grpc_port: int = 50053
    task_service_address: str = "127.0.0.1:50051"
    # Events read per round from the durable event stream.
    event_batch: int = 500
