"""The per-address back-off on failed token checks: 429 with Retry-After, growing, never sleeping, health exempt."""

from __future__ import annotations

import time

import pytest

from pulmo.errors import ConfigError
from pulmo.service import ServiceConfig
from pulmo.service.errors import AuthBackoffError
from pulmo.service.throttle import AuthThrottle

TOKEN = "s3cret-token"
GOOD = {"Authorization": f"Bearer {TOKEN}"}
BAD = {"Authorization": "Bearer guess"}


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def guarded(service):
    """A started service with a token, its back-off on a fake clock: yields ``(client, clock)``."""

    def start(**kwargs):
        ctx = service(token=TOKEN, **kwargs)
        client = ctx.__enter__()
        clock = FakeClock()
        client.app.state.auth_throttle.clock = clock
        started.append(ctx)
        return client, clock

    started = []
    yield start
    for ctx in started:
        ctx.__exit__(None, None, None)


def test_wrong_tokens_start_a_growing_back_off_and_a_good_token_works_after_it(guarded):
    client, clock = guarded()
    for _ in range(4):
        assert client.get("/api/v1/jobs", headers=BAD).status_code == 401
    assert client.get("/api/v1/jobs").status_code == 401  # a missing token counts too: the 5th failure
    t0 = time.monotonic()
    r = client.get("/api/v1/jobs", headers=GOOD)  # refused during the back-off, even with the right token
    assert time.monotonic() - t0 < 1.0  # answered at once: the server does not sleep
    assert r.status_code == 429 and r.json()["code"] == "auth_backoff"
    assert r.headers["retry-after"] == "10" and "retry in 10 s" in r.json()["detail"]
    assert client.get("/api/v1/health").status_code == 200  # liveness is exempt
    clock.now += 4
    r = client.post("/api/v1/jobs", headers=GOOD, files=[("files", ("a.png", b"x"))])
    assert r.status_code == 429 and r.headers["retry-after"] == "6"

    clock.now += 6  # the back-off is over: one more wrong token starts a back-off twice as long
    assert client.get("/api/v1/jobs", headers=BAD).status_code == 401
    r = client.get("/api/v1/jobs", headers=GOOD)
    assert r.status_code == 429 and r.headers["retry-after"] == "20"
    clock.now += 20
    assert client.get("/api/v1/jobs", headers=BAD).status_code == 401
    assert client.get("/api/v1/jobs", headers=GOOD).headers["retry-after"] == "40"

    clock.now += 40  # over: the right token works and clears the address
    assert client.get("/api/v1/jobs", headers=GOOD).status_code == 200
    for _ in range(4):
        assert client.get("/api/v1/jobs", headers=BAD).status_code == 401
    assert client.get("/api/v1/jobs", headers=GOOD).status_code == 200  # 4 failures: no back-off
    assert client.app.state.auth_throttle.tracked() == 0


def test_failures_outside_the_window_do_not_add_up(guarded):
    client, clock = guarded(auth_max_failures=3, auth_window_s=30)
    for _ in range(10):
        assert client.get("/api/v1/jobs", headers=BAD).status_code == 401
        clock.now += 16  # at most 2 failures within any 30 s
    assert client.get("/api/v1/jobs", headers=GOOD).status_code == 200


def test_back_off_is_per_address_and_only_with_a_token(guarded, service, tmp_path):
    client, _clock = guarded(auth_max_failures=2)
    for _ in range(2):
        client.get("/api/v1/jobs", headers=BAD)
    assert client.get("/api/v1/jobs", headers=GOOD).status_code == 429
    throttle = client.app.state.auth_throttle
    throttle.check("192.0.2.7")  # another address is not affected
    with pytest.raises(AuthBackoffError) as exc:
        throttle.check("testclient")
    assert exc.value.status_code == 429 and exc.value.retry_after == 10

    with service(data_dir=tmp_path / "open", auth_max_failures=1) as open_client:  # no token: nothing to count
        for _ in range(3):
            assert open_client.get("/api/v1/jobs").status_code == 200
        assert open_client.app.state.auth_throttle.tracked() == 0


def test_throttle_caps_the_back_off_forgets_quiet_addresses_and_stays_bounded():
    clock = FakeClock()
    t = AuthThrottle(max_failures=2, window_s=60, backoff_s=10, max_backoff_s=100, max_clients=50, clock=clock)
    assert t.failure("a") == 0 and t.failure("a") == 10
    delays = []
    for _ in range(6):
        clock.now += delays[-1] if delays else 10
        delays.append(t.failure("a"))
    assert delays == [20, 40, 80, 100, 100, 100]
    clock.now += 100 + 60  # quiet for a window after the back-off: a fresh start
    assert t.failure("a") == 0 and t.failure("a") == 10
    for i in range(500):
        t.failure(f"10.0.{i // 256}.{i % 256}")
        clock.now += 0.01
    assert t.tracked() <= 50


@pytest.mark.parametrize("setting", [{"auth_max_failures": 0}, {"auth_window_s": 0}, {"auth_backoff_s": -1},
                                     {"auth_backoff_max_s": 0}])
def test_back_off_settings_are_checked(tmp_path, setting):
    with pytest.raises(ConfigError, match=next(iter(setting))):
        ServiceConfig(data_dir=tmp_path, **setting)
