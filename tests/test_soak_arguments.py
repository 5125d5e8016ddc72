"""``scripts/soak.py`` accepts each topology and fault it soaks, and refuses, with a
message, the combinations it cannot run. (The soak itself is long: run it by hand, see
docs/security.md.)"""

from __future__ import annotations

import importlib.util
from types import ModuleType

import pytest

from tests.support import ROOT

DATABASE, REPLICA = "DRF_LLM_KEYS_TEST_DATABASE_URL", "DRF_LLM_KEYS_TEST_REPLICA_URL"
PRIMARY = "postgres://root@127.0.0.1:5432/db"


@pytest.fixture
def soak() -> ModuleType:
    spec = importlib.util.spec_from_file_location("soak", ROOT / "scripts" / "soak.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("fault", ["stop", "pause", "flush", "restart-snapshot", "failover", "lost-tracker"])
def test_every_fault_is_accepted_with_a_private_redis(soak, fault):
    args = soak.arguments(["--fault", fault, "--fault-every", "5", "--fault-length", "1"])
    assert (args.fault, args.redis, args.fault_every, args.fault_length) == (fault, "private", 5, 1)


def test_replica_lag_reads_the_standby_named_in_the_environment(soak, monkeypatch):
    monkeypatch.setenv(DATABASE, PRIMARY)
    monkeypatch.setenv(REPLICA, "postgres://root@127.0.0.1:5433")
    args = soak.arguments(["--replica-lag", "1.5", "--fault", "failover"])
    assert (args.replica_lag, args.fault) == (1.5, "failover")


@pytest.mark.parametrize(
    ("argv", "environment", "message"),
    [
        (["--fault", "restart-snapshot", "--redis", "env"], {}, "--fault needs --redis private"),
        (["--fault", "failover", "--fault-every", "3"], {}, "needs --fault-every at least"),
        (["--fault", "lost"], {}, "invalid choice: 'lost'"),
        (["--replica-lag", "-1"], {}, "--replica-lag must be 0 or more"),
        (["--replica-lag", "1"], {DATABASE: ""}, "needs DRF_LLM_KEYS_TEST_DATABASE_URL"),
        (["--replica-lag", "1"], {DATABASE: PRIMARY, REPLICA: ""}, "needs DRF_LLM_KEYS_TEST_REPLICA_URL"),
    ],
)
def test_what_it_cannot_run_is_refused_with_a_message(soak, monkeypatch, capsys, argv, environment, message):
    for name, value in environment.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(SystemExit) as exit_:
        soak.arguments(argv)
    assert exit_.value.code == 2
    assert message in capsys.readouterr().err
