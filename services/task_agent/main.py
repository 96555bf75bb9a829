from libs.common.logging import configure_logging
from libs.common.service import run
from libs.common.tracing import configure_tracing
from services.task_agent.app import TaskAgentApp
from services.task_agent.settings import TaskAgentSettings


def main() -> None:
    settings = TaskAgentSettings()
    configure_logging(
        TaskAgentApp.role,
        settings.instance,
        settings.log_format,
        settings.log_level,
        settings.version,
    )
    configure_tracing(
        TaskAgentApp.role, settings.instance, settings.version, settings.otlp_endpoint
    )
    run(lambda: TaskAgentApp(settings))


if __name__ == "__main__":
    main()
