"""How sevpipe reaches AWS (settings ``aws``): region, endpoint and credentials.

The endpoint is a setting so that a private (VPC) endpoint, or an emulator in tests, is used
the same way as AWS itself. Without an access key, the default credential chain applies
(environment, the instance's or pod's role).
"""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, SecretStr

from schemas.durations import Seconds


class AwsConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    region: str = Field("us-east-1", min_length=1, description="the region of every call")
    endpoint_url: str | None = Field(
        None, description="one endpoint for every service (a VPC endpoint, an emulator)"
    )
    access_key_id: str | None = Field(None, description="none: the default credential chain")
    secret_access_key: SecretStr | None = Field(None, description="with access_key_id")
    secret_access_key_file: Path | None = Field(
        None, description="a file holding secret_access_key"
    )
    timeout: Seconds = Field(10.0, gt=0, description="connect and read timeout per request")
    max_attempts: int = Field(
        5, ge=1, le=20, description="attempts per call; throttling and 5xx are retried"
    )

    def secret(self) -> str | None:
        if self.secret_access_key is not None:
            return self.secret_access_key.get_secret_value()
        if self.secret_access_key_file is None:
            return None
        return self.secret_access_key_file.read_text(encoding="utf-8").strip()
