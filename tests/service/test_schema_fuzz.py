"""A short, bounded schemathesis run against a real uvicorn server: no input from the schema's
space (valid or not) may get a 5xx. Outside testing ran about 20,000 cases; this keeps a few per
operation in the suite, seeded, so a regression shows here first."""
import pytest
import schemathesis
from hypothesis import HealthCheck, settings as hypothesis_settings
from schemathesis.checks import not_a_server_error

from service.http.app import create_app
from service.settings import Settings

from svc_helpers import FAMILY_ID, running_server


@pytest.fixture(scope="module")
def api_url(store, tmp_path_factory):
    app = create_app(Settings(store=store, family=FAMILY_ID, device="cpu", max_batch=8, max_wait_ms=2,
                              download_cache_dir=tmp_path_factory.mktemp("fuzz-downloads"),
                              download_cache_bytes=4 << 20))
    with running_server(app) as url:
        yield url


# the schema does not depend on the family: it comes from an app that never starts; the cases go
# over HTTP to the real server of the fixture
schema = schemathesis.openapi.from_dict(create_app(Settings(store="unused")).openapi())


@schema.parametrize()
@hypothesis_settings(max_examples=30, deadline=None, derandomize=True,
                     suppress_health_check=list(HealthCheck))
def test_no_input_is_a_server_error(case, api_url):
    response = case.call(base_url=api_url, timeout=30)
    case.validate_response(response, checks=[not_a_server_error])
