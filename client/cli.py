"""`phoneseller`: the command-line client of the phone shop.

Thin: it parses arguments, makes one call through `client.api` and prints the answer with
`client.tables`. Every call carries a bearer token: the one given with --token, or one signed
by the development issuer of `make up` for whom the call acts (client/signin.py); `phoneseller
token` prints such a token for other tools (grpcurl, curl). Exit codes: 0 done, 1 the call (or
a demo step) failed, 2 bad usage.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TextIO

from google.protobuf.message import Message

from client import tables
from client.api import (
    DEFAULT_DEALER,
    DEFAULT_GATEWAY,
    GATEWAY_ENV,
    SERVICES,
    Addresses,
    ApiError,
    PhoneSeller,
    new_request_id,
)
from client.demo import Demo, supervisor_control
from client.issuer import DEFAULT_TTL_SECONDS, DevIssuer, IssuerError, default_folder
from client.signin import BearerToken, DevSignIn, SignIn

RUN_DIR_ENV = "PHONESELLER_RUN_DIR"
TOKEN_ENV = "PHONESELLER_TOKEN"

ADDRESSES_HELP = f"""\
where the calls go:
  Every call goes to the gateway at --address (default: ${GATEWAY_ENV}, else {DEFAULT_GATEWAY}),
  which routes each service by its gRPC path, verifies the token and passes the verified
  claims on. --order-address, --payment-address, --promotion-address, --store-address and
  --customer-address send one service's calls elsewhere (another gateway: the services take
  their callers only from one).

signing in:
  Each call is made for someone: place, history and balance for their customer; get and
  cancel for --customer (get without it as an operator, who may read anyone's); ship for
  --dealer. Without --token (default: ${TOKEN_ENV}) the client signs a token for that user with
  the development issuer of `make up` (.run/auth); with it, that one token goes with every
  call. `phoneseller token --customer alice` prints a token for grpcurl and curl.

output:
  Tables for people by default; --json prints the answer as proto3 JSON (the .proto field
  names, default values included) and an error as a JSON object on stderr. place and cancel
  print the request id they used (a generated one unless --request-id is given): pass it
  again with --request-id to retry the same call safely. Exit codes: 0 done, 1 the call or a
  demo step failed, 2 bad usage.

examples:
  phoneseller place --customer alice --item "Galaxy S25" --quantity 1 --unit-price 1200000
  phoneseller get ORDER_ID --customer alice
  phoneseller cancel ORDER_ID --customer alice
  phoneseller --json history alice
  TOKEN=$(phoneseller token --customer alice)
"""


def _add_common(parser: argparse.ArgumentParser, *, top: bool) -> None:
    """The options every command takes, before or after its name. Below a command they
    default to SUPPRESS so that they do not overwrite what was given before it."""

    def default(value: object) -> object:
        return value if top else argparse.SUPPRESS

    group = parser.add_argument_group("connection and output")
    group.add_argument(
        "--address",
        metavar="HOST:PORT",
        default=default(os.environ.get(GATEWAY_ENV) or DEFAULT_GATEWAY),
        help=f"the gateway (default: ${GATEWAY_ENV}, else {DEFAULT_GATEWAY})",
    )
    for service in SERVICES:
        group.add_argument(
            f"--{service}-address",
            metavar="HOST:PORT",
            default=default(None),
            help=f"send {service} calls here instead",
        )
    group.add_argument(
        "--timeout",
        type=float,
        metavar="SECONDS",
        default=default(10.0),
        help="deadline of each call (default: 10)",
    )
    group.add_argument(
        "--json",
        action="store_true",
        default=default(False),
        help="print proto3 JSON instead of tables",
    )
    group.add_argument(
        "--token",
        metavar="JWT",
        default=default(os.environ.get(TOKEN_ENV) or None),
        help=f"send this bearer token with every call (default: ${TOKEN_ENV}, else one signed "
        "by the development issuer for whom each call acts)",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="phoneseller",
        description="Order phones, cancel, ship and follow points on the phoneseller system.",
        epilog=ADDRESSES_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _add_common(parser, top=True)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, help_text: str) -> argparse.ArgumentParser:
        sub = commands.add_parser(
            name,
            help=help_text,
            description=help_text,
            epilog=ADDRESSES_HELP,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        _add_common(sub, top=False)
        return sub

    place = command("place", "place an order; it is paid at once")
    place.add_argument("--customer", required=True, help="the customer id")
    place.add_argument("--item", required=True, help='the phone model, e.g. "Galaxy S25"')
    place.add_argument("--quantity", type=int, required=True, help="how many phones (1-100)")
    place.add_argument(
        "--unit-price", type=int, required=True, metavar="WON", help="price of one phone in won"
    )
    place.add_argument("--request-id", help="reuse to retry safely (default: a new one)")

    get = command("get", "show one order")
    get.add_argument("order_id", metavar="ORDER_ID")
    get.add_argument("--customer", help="read as this customer (default: as an operator)")

    cancel = command("cancel", "cancel an order: its payment and points are reversed")
    cancel.add_argument("order_id", metavar="ORDER_ID")
    cancel.add_argument("--customer", required=True, help="the order's customer (only they may)")
    cancel.add_argument("--request-id", help="reuse to retry safely (default: a new one)")

    history = command("history", "a customer's orders and points, as the customer view sees them")
    history.add_argument("customer_id", metavar="CUSTOMER_ID")
    history.add_argument("--timeline", action="store_true", help="also every order's events")

    balance = command("balance", "a customer's point balance and ledger")
    balance.add_argument("customer_id", metavar="CUSTOMER_ID")

    ship = command("ship", "ship a paid order (the dealer's side)")
    ship.add_argument("order_id", metavar="ORDER_ID")
    ship.add_argument("--dealer", default=DEFAULT_DEALER, help=f"as (default: {DEFAULT_DEALER})")
    ship.add_argument("--request-id", help="an id that makes retries idempotent (optional)")

    token = commands.add_parser(
        "token",
        help="print a bearer token from the development issuer (`make up` made its key)",
        description="Print a bearer token signed by the development issuer, for grpcurl "
        '(-H "authorization: Bearer $TOKEN") and curl (-H "Authorization: Bearer $TOKEN").',
    )
    who = token.add_mutually_exclusive_group(required=True)
    who.add_argument("--customer", metavar="CUSTOMER_ID", help="a customer (the subject)")
    who.add_argument("--dealer", metavar="DEALER_ID", help="a dealer: lists and ships orders")
    who.add_argument("--operator", metavar="NAME", help="an operator: reads anyone's data")
    token.add_argument(
        "--ttl",
        type=int,
        default=DEFAULT_TTL_SECONDS,
        metavar="SECONDS",
        help=f"how long the token is good for (default: {DEFAULT_TTL_SECONDS})",
    )
    token.add_argument(
        "--run-dir",
        type=Path,
        default=None,
        help=f"the local stack's folder (default: ${RUN_DIR_ENV}, else the checkout's .run)",
    )

    demo = command(
        "demo",
        "play the seed's story against the running system, step by step (tables only)",
    )
    demo.add_argument(
        "--customer",
        help="the customer to use; it must have no orders yet (default: a new demo-… id)",
    )
    demo.add_argument(
        "--promotion-control",
        choices=("supervisor", "none"),
        default="supervisor",
        help="how to stop and start promotion: supervisorctl of the local stack (default), "
        "or none to skip the outage part",
    )
    demo.add_argument(
        "--run-dir",
        type=Path,
        default=Path(os.environ.get(RUN_DIR_ENV) or ".run"),
        help=f"the local stack's folder, holding supervisord.conf "
        f"(default: ${RUN_DIR_ENV}, else .run)",
    )
    demo.add_argument(
        "--step-timeout",
        type=float,
        default=30.0,
        metavar="SECONDS",
        help="how long an asynchronous step may take (default: 30)",
    )
    return parser


def addresses_of(args: argparse.Namespace) -> Addresses:
    return Addresses.through(args.address).overridden(
        {s: getattr(args, f"{s}_address") for s in SERVICES}
    )


def _print_answer(
    args: argparse.Namespace,
    message: Message,
    table: Callable[[], str],
    request_id: str | None,
    out: TextIO,
    err: TextIO,
) -> None:
    if args.json:
        if request_id is not None:
            print(f"request id: {request_id}", file=err)
        print(tables.to_json(message), file=out)
    else:
        print(table(), file=out)


def _run_call(args: argparse.Namespace, api: PhoneSeller, out: TextIO, err: TextIO) -> int:
    request_id: str | None = None
    try:
        if args.command == "place":
            request_id = args.request_id or new_request_id()
            order = api.place_order(
                args.customer, args.item, args.quantity, args.unit_price, request_id
            )
            _print_answer(
                args, order, lambda: tables.order_table(order, request_id), request_id, out, err
            )
        elif args.command == "get":
            order = api.get_order(args.order_id, args.customer)
            _print_answer(args, order, lambda: tables.order_table(order), None, out, err)
        elif args.command == "cancel":
            request_id = args.request_id or new_request_id()
            order = api.cancel_order(args.order_id, request_id, args.customer)
            _print_answer(
                args, order, lambda: tables.order_table(order, request_id), request_id, out, err
            )
        elif args.command == "history":
            history = api.history(args.customer_id)
            _print_answer(
                args,
                history,
                lambda: tables.history_table(history, timeline=args.timeline),
                None,
                out,
                err,
            )
        elif args.command == "balance":
            balance = api.balance(args.customer_id)
            _print_answer(args, balance, lambda: tables.balance_table(balance), None, out, err)
        elif args.command == "ship":
            api.dealer = args.dealer
            store_order = api.ship_order(args.order_id, args.request_id or "")
            _print_answer(
                args, store_order, lambda: tables.store_order_table(store_order), None, out, err
            )
        else:  # pragma: no cover - argparse only lets known commands through
            raise AssertionError(args.command)
    except ApiError as error:
        if args.json:
            print(tables.error_json(error, request_id), file=err)
        else:
            print(tables.error_table(error, request_id), file=err)
        return 1
    except IssuerError as error:
        print(f"phoneseller: cannot sign in: {error} (or pass --token)", file=err)
        return 1
    return 0


def _run_token(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    folder = args.run_dir / "auth" if args.run_dir else default_folder()
    for role in ("customer", "dealer", "operator"):
        subject = getattr(args, role)
        if subject:
            try:
                print(DevIssuer(folder).token(subject, role, ttl_seconds=args.ttl), file=out)
            except IssuerError as error:
                print(f"phoneseller token: {error}", file=err)
                return 1
    return 0


def sign_in_of(args: argparse.Namespace) -> SignIn:
    """The token given, or the development issuer's for whom each call acts."""
    if args.token:
        return BearerToken(args.token)
    return DevSignIn(DevIssuer(default_folder()))


def _run_demo(args: argparse.Namespace, api: PhoneSeller, out: TextIO, err: TextIO) -> int:
    control = None
    if args.promotion_control == "supervisor":
        config = args.run_dir / "supervisord.conf"
        if not config.exists():
            print(
                f"phoneseller demo: {config} not found; start the local stack (`make up`), "
                "point --run-dir at it, or pass --promotion-control none",
                file=err,
            )
            return 1
        control = supervisor_control(args.run_dir)
    demo = Demo(api, out, promotion=control, timeout=args.step_timeout)
    if args.customer:
        demo.customer = args.customer
    return 0 if demo.run() else 1


def main(argv: Sequence[str] | None = None, out: TextIO | None = None) -> int:
    out = out or sys.stdout
    err = sys.stderr
    args = build_parser().parse_args(argv)
    if args.command == "token":
        return _run_token(args, out, err)
    try:
        with PhoneSeller(addresses_of(args), timeout=args.timeout, sign_in=sign_in_of(args)) as api:
            if args.command == "demo":
                return _run_demo(args, api, out, err)
            return _run_call(args, api, out, err)
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
