from libs.common.logging import configure_logging
from libs.common.service import run
from libs.common.tracing import configure_tracing
from services.orchestrator.app import OrchestratorApp
from services.orchestrator.settings import OrchestratorSettings


def main() -> None:
    settings = OrchestratorSettings()
    configure_logging(
        OrchestratorApp.role,
        settings.instance,
        settings.log_format,
        settings.log_level,
        settings.version,
    )
    configure_tracing(
        OrchestratorApp.role, settings.instance, settings.version, settings.otlp_endpoint
    )
    run(lambda: OrchestratorApp(settings))


if __name__ == "__main__":
    main()
