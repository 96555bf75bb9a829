"""Schemathesis against the running gateway: requests generated from the gateway's own
/openapi.json, sent as an admin, must never get a 5xx and must be answered as the schema
says.

Left out: POST /v1/dead-letters/purge, which would delete the dead letters other tests of
the shared platform make and look for; and valid requests to POST /v1/webhook-subscriptions,
which would deliver the shared platform's events to made-up URLs (invalid ones run). Every
other route runs; made-up ids answer 404, and the task service refuses task types no agent
serves, so the fuzzing creates next to nothing."""

import time

import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import response_schema_conformance

from libs.common.tokens import mint
from tests.secure import AUDIENCE, dev_secrets

# Per operation and mode: some 25 operations, at the gateway's default rate limit, take
# well under a minute.
EXAMPLES = {GenerationMode.POSITIVE: 25, GenerationMode.NEGATIVE: 15}
CHECKS = [not_a_server_error, response_schema_conformance]
NEGATIVE_ONLY = {"POST /v1/webhook-subscriptions"}


@pytest.fixture(scope="module")
def admin_headers() -> dict[str, str]:
    """An admin of its own: the fuzzing spends its own rate-limit bucket, not the one the
    other tests' admin draws on."""
    key = dev_secrets().jwt_private_key.read_bytes()
    return {"Authorization": f"Bearer {mint(key, 'fuzz-admin', 'admin', AUDIENCE, 600)}"}


def _fuzz(
    operation: schemathesis.APIOperation, mode: GenerationMode, headers: dict[str, str]
) -> None:
    """Raises the first failed check. No shrinking: the first failing example is the
    report, and the time stays bounded."""

    @given(case=operation.as_strategy(generation_mode=mode))
    @settings(
        max_examples=EXAMPLES[mode],
        deadline=None,
        phases=[Phase.explicit, Phase.generate],
        suppress_health_check=list(HealthCheck),
        database=None,
    )
    def run(case: schemathesis.Case) -> None:
        response = case.call(headers=headers)
        while response.status_code == 429:
            # The gateway's rate limit: wait as told, like any client.
            time.sleep(int(response.headers["retry-after"][0]))
            response = case.call(headers=headers)
        case.validate_response(response, checks=CHECKS, headers=headers)

    run()


def test_the_gateway_answers_every_request_as_its_schema_says(platform, admin_headers) -> None:
    # Not through schemathesis's pytest plugin (`from_fixture`): it sets a Node attribute
    # pytest 9.2 no longer has.
    schema = schemathesis.openapi.from_url(f"{platform.stack.gateway_url}/openapi.json")
    failures = []
    for result in schema.exclude(method="POST", path="/v1/dead-letters/purge").get_all_operations():
        operation = result.ok()
        for mode in GenerationMode:
            if mode is GenerationMode.POSITIVE and operation.label in NEGATIVE_ONLY:
                continue
            try:
                _fuzz(operation, mode, admin_headers)
            except Unsatisfiable:
                # Nothing about this operation can be made invalid (no parameters, no body).
                if mode is GenerationMode.POSITIVE:
                    raise
            except (AssertionError, BaseExceptionGroup) as exc:
                failures.append(f"{operation.label} ({mode}): {exc}")
    assert not failures, "\n\n".join(failures)
