"""The NATS grants (stack/nats.py) match what the code does, and the seeds are kept private.

What the server then refuses is shown against a real nats-server in
tests/integration/test_nats_auth.py.
"""

from __future__ import annotations

import importlib.util
import json
import stat
from pathlib import Path

import yaml

from services.customer.rebuild import NATS_USER, REPLAY_CONSUMER
from services.kit.config import SERVICE_NAMES
from stack.nats import ADMIN, SERVICE_GRANTS, NatsAuth, chart_env_name, main, public_key
from stack.supervisor import LocalStack


def test_every_service_has_a_grant() -> None:
    assert set(SERVICE_GRANTS) == set(SERVICE_NAMES)


def test_a_service_publishes_its_own_events_and_uses_its_own_consumer_only() -> None:
    for service in SERVICE_NAMES:
        grant = SERVICE_GRANTS[service]
        has_events = importlib.util.find_spec(f"phoneseller.{service}.v1.events_pb2") is not None
        # The kit names a service's durable consumer after the service (services/kit/server.py).
        consumes = importlib.util.find_spec(f"services.{service}.handlers") is not None
        assert grant.publishes == ((f"phoneseller.{service}.>",) if has_events else ()), service
        assert grant.durables == ((service,) if consumes else ()), service
        assert not grant.admin
        permissions = grant.permissions()
        assert permissions is not None
        assert permissions["subscribe"] == {"allow": [f"_INBOX_{service}.>"]}
        published = [s for s in permissions["publish"]["allow"] if not s.startswith("$JS.")]
        assert published == list(grant.publishes), "no other subject outside JetStream's API"


def test_only_the_rebuild_user_may_delete_a_consumer_and_only_its_own() -> None:
    for service, grant in SERVICE_GRANTS.items():
        permissions = grant.permissions()
        assert permissions is not None
        deletes = [s for s in permissions["publish"]["allow"] if ".DELETE." in s]
        expected = [f"$JS.API.CONSUMER.DELETE.PHONESELLER.{REPLAY_CONSUMER}"]
        assert deletes == (expected if service == NATS_USER else []), service


def test_seeds_are_private_kept_and_never_in_the_server_config(tmp_path: Path) -> None:
    auth = NatsAuth(tmp_path / "nats")
    seed_file = auth.seed_file("promotion")
    assert stat.S_IMODE(seed_file.stat().st_mode) == 0o600
    assert stat.S_IMODE(seed_file.parent.stat().st_mode) == 0o700
    seed = seed_file.read_bytes().strip()
    assert seed.startswith(b"SU")

    config = auth.write_server_config().read_text()
    assert seed.decode() not in config
    users = json.loads(config.split("authorization", 1)[1])["users"]
    assert len(users) == len(SERVICE_GRANTS) + 1, "the services and admin"
    assert {u["nkey"] for u in users} == {auth.public_key(g) for g in auth.grants}
    [admin] = [u for u in users if u["nkey"] == auth.public_key(ADMIN)]
    assert "permissions" not in admin, "the operator's user is unrestricted"

    again = NatsAuth(tmp_path / "nats")
    assert again.public_key("promotion") == public_key(seed), "the same users after a restart"


def test_the_local_stack_gives_each_service_its_own_seed(tmp_path: Path) -> None:
    stack = LocalStack(run_dir=tmp_path)
    files = {s: stack.env_for(s, 0)["PHONESELLER_NATS_NKEY_FILE"] for s in SERVICE_NAMES}
    assert len(set(files.values())) == len(SERVICE_NAMES)
    keys = {s: public_key(Path(f).read_bytes().strip()) for s, f in files.items()}
    assert keys == {s: stack.nats_auth.public_key(s) for s in SERVICE_NAMES}


def test_the_keys_command_gives_the_nats_chart_every_public_key(tmp_path: Path) -> None:
    assert main(["keys", str(tmp_path / "keys")]) == 0
    auth = NatsAuth(tmp_path / "keys")
    values = yaml.safe_load((tmp_path / "keys" / "nats-keys-values.yaml").read_text())
    assert values == {
        "container": {"env": {chart_env_name(u): auth.public_key(u) for u in auth.grants}}
    }
    seeds = sorted((tmp_path / "keys").glob("*.nk"))
    assert [f.stem for f in seeds] == sorted(auth.grants)
    assert {stat.S_IMODE(f.stat().st_mode) for f in seeds} == {0o600}
