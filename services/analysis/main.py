from libs.common.logging import configure_logging
from libs.common.service import run
from libs.common.tracing import configure_tracing
from services.analysis.app import AnalysisApp
from services.analysis.settings import AnalysisSettings


def main() -> None:
    settings = AnalysisSettings()
    configure_logging(
        AnalysisApp.role,
        settings.instance,
        settings.log_format,
        settings.log_level,
        settings.version,
    )
    configure_tracing(AnalysisApp.role, settings.instance, settings.version, settings.otlp_endpoint)
    run(lambda: AnalysisApp(settings))


if __name__ == "__main__":
    main()
