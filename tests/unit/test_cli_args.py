"""The command line: where calls go, who they are signed for, options before or after the
command, usage errors."""

from __future__ import annotations

import io
from collections.abc import Callable
from pathlib import Path

import grpc
import jwt
import pytest

from client import cli
from client.api import Addresses, ApiError
from client.demo import Action, Demo, StepError
from client.issuer import AUDIENCE, ISSUER, DevIssuer


def addresses(*argv: str) -> Addresses:
    return cli.addresses_of(cli.build_parser().parse_args([*argv, "get", "o-1"]))


def test_everything_goes_to_the_gateway_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PHONESELLER_GATEWAY", raising=False)
    assert addresses() == Addresses.through("127.0.0.1:8080")


def test_the_gateway_comes_from_the_environment_or_the_option(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("PHONESELLER_GATEWAY", "gw:443")
    assert addresses() == Addresses.through("gw:443")
    assert addresses("--address", "other:80") == Addresses.through("other:80")


def test_per_service_addresses_override_the_gateway() -> None:
    found = addresses("--address", "gw:1", "--order-address", "o:1", "--customer-address", "c:1")
    assert found == Addresses("o:1", "gw:1", "gw:1", "gw:1", "c:1")


def test_a_given_token_goes_with_every_call(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PHONESELLER_TOKEN", "from-env")
    parsed = cli.build_parser().parse_args(["get", "o-1"])
    assert cli.sign_in_of(parsed).token("customer", "bob") == "from-env"
    parsed = cli.build_parser().parse_args(["history", "alice", "--token", "given"])
    assert cli.sign_in_of(parsed).token("operator", "x") == "given"


def test_without_a_token_the_development_issuer_signs_for_whom_the_call_acts(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.delenv("PHONESELLER_TOKEN", raising=False)
    monkeypatch.setenv("PHONESELLER_RUN_DIR", str(tmp_path))
    DevIssuer(tmp_path / "auth").ensure()
    sign_in = cli.sign_in_of(cli.build_parser().parse_args(["history", "alice"]))
    claims = jwt.decode(
        sign_in.token("customer", "alice") or "", options={"verify_signature": False}
    )
    assert (claims["sub"], claims["roles"], claims["iss"]) == ("alice", ["customer"], ISSUER)


def test_token_prints_a_token_of_the_issuer(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    issuer = DevIssuer(tmp_path / "auth").ensure()
    assert cli.main(["token", "--dealer", "d1", "--run-dir", str(tmp_path)]) == 0
    token = capsys.readouterr().out.strip()
    public = jwt.PyJWKSet.from_json(issuer.jwks_path.read_text()).keys[0]
    claims = jwt.decode(token, public.key, algorithms=["ES256"], audience=AUDIENCE)
    assert (claims["sub"], claims["roles"]) == ("d1", ["dealer"])


def test_token_without_a_key_says_to_bring_the_stack_up(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    assert cli.main(["token", "--customer", "alice", "--run-dir", str(tmp_path)]) == 1
    assert "make up" in capsys.readouterr().err


def test_common_options_also_after_the_command() -> None:
    args = cli.build_parser().parse_args(
        ["--address", "gw:1", "history", "alice", "--json", "--promotion-address", "p:1"]
    )
    assert args.json
    assert cli.addresses_of(args) == Addresses("gw:1", "gw:1", "p:1", "gw:1", "gw:1")
    before = cli.build_parser().parse_args(["--json", "--timeout", "3", "balance", "alice"])
    assert before.json
    assert before.timeout == 3.0


def test_place_takes_its_fields() -> None:
    args = cli.build_parser().parse_args(
        [
            "place",
            "--customer",
            "a",
            "--item",
            "Galaxy",
            "--quantity",
            "2",
            "--unit-price",
            "1200000",
            "--request-id",
            "r-1",
        ]
    )
    assert (args.customer, args.item, args.quantity, args.unit_price, args.request_id) == (
        "a",
        "Galaxy",
        2,
        1_200_000,
        "r-1",
    )


@pytest.mark.parametrize(
    "argv",
    [
        [],
        ["nope"],
        ["get"],
        ["place", "--customer", "a", "--item", "x", "--quantity", "1"],
        ["place", "--customer", "a", "--item", "x", "--quantity", "1.5", "--unit-price", "1"],
        ["demo", "--promotion-control", "kubectl"],
    ],
)
def test_usage_errors_exit_2(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        cli.main(argv)
    assert exited.value.code == 2
    assert "usage: phoneseller" in capsys.readouterr().err


def test_help_documents_the_addresses(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        cli.main(["--help"])
    assert exited.value.code == 0
    text = capsys.readouterr().out
    for word in ("PHONESELLER_GATEWAY", "127.0.0.1:8080", "--order-address", "--token", "--json"):
        assert word in text


class Unavailable:
    """An api whose promotion is down: every balance call is refused."""

    def balance(self, customer_id: str) -> None:
        raise ApiError(grpc.StatusCode.UNAVAILABLE, "down")


def test_a_failed_demo_step_starts_promotion_again_and_says_what_it_expected() -> None:
    actions: list[Action] = []

    class BrokenAfterTheOutage(Demo):
        def happy_path(self) -> None:  # type: ignore[override]
            pass

        def place(self) -> None:  # type: ignore[override]
            raise StepError("status PAID", "status ORDERED")

    out = io.StringIO()
    demo = BrokenAfterTheOutage(
        Unavailable(),  # type: ignore[arg-type]
        out,
        promotion=actions.append,
        timeout=1,
    )
    assert demo.run() is False
    assert actions == ["stop", "start"]
    text = out.getvalue()
    assert "FAILED at step 2: An order still succeeds" in text
    assert "expected: status PAID" in text
    assert "observed: status ORDERED" in text


def test_a_poll_that_never_sees_its_condition_fails_with_the_last_sight() -> None:
    demo = Demo(Unavailable(), io.StringIO(), timeout=0.05, interval=0.01)  # type: ignore[arg-type]
    seen: Callable[[int], str] = lambda value: f"saw {value}"  # noqa: E731
    with pytest.raises(StepError) as failed:
        demo.poll(lambda: 1, lambda value: value == 2, "two", seen)
    assert failed.value.expected == "two within 0.05 s"
    assert failed.value.observed == "saw 1"
