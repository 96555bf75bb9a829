from pydantic_settings import BaseSettings, SettingsConfigDict


class CliSettings(BaseSettings):
    """Where the gateway is and who is calling: AGENTRY_URL, AGENTRY_TOKEN."""

    model_config = SettingsConfigDict(env_prefix="AGENTRY_", extra="ignore")

    url: str = "http://127.0.0.1:8080"
    token: str = ""
