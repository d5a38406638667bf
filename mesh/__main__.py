"""`python -m mesh render|run|env`: the local Envoy configuration from the chart's mesh values.

    python -m mesh render --values helm/phoneseller/values.yaml --out .run/envoy.yaml
    python -m mesh render ... --instances order=127.0.0.1:50051,payment=127.0.0.1:50052 \
        --instances payment=127.0.0.1:50062 --gateway-port 8080 \
        --fault 'promotion={"delay":{"fixedDelay":"1s","percentage":{"value":100}}}'
    python -m mesh run ...    # render, then exec Envoy in the foreground
    python -m mesh env ...    # print PHONESELLER_*_ADDRESS for the services
    python -m mesh render --mtls .run/pki ...   # mTLS + RBAC with the certificates there

A fault override replaces the destination's `fault` from the values (`promotion={}` clears it).
Envoy reads its configuration at start: after re-rendering, restart Envoy.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from mesh.envoy import RenderError, RenderOptions, render_envoy_config, write_envoy_config
from mesh.policy import MeshPolicy, PolicyError, fault_from_cli, load_policy
from mesh.process import EnvoyError, envoy_binary, validate_config
from mesh.security import MeshTls, load_identities
from mesh.topology import (
    DEFAULT_ADMIN_PORT,
    DEFAULT_GATEWAY_PORT,
    DEFAULT_HOST,
    DEFAULT_INBOUND_BASE_PORT,
    DEFAULT_SIDECAR_PORTS,
    Topology,
    TopologyError,
    build_topology,
    parse_instances,
)

DEFAULT_VALUES = "helm/phoneseller/values.yaml"
DEFAULT_DESCRIPTORS = "gen/descriptors.binpb"


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m mesh", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    for name, help_ in (
        ("render", "write the Envoy bootstrap"),
        ("run", "write the Envoy bootstrap, then exec Envoy"),
        ("env", "print the PHONESELLER_*_ADDRESS variables for the services"),
    ):
        s = sub.add_parser(name, help=help_)
        s.add_argument("--values", default=DEFAULT_VALUES, help="Helm values with `mesh:`")
        s.add_argument("--out", default=".run/envoy.yaml", help="where to write the bootstrap")
        s.add_argument(
            "--descriptors",
            default=None,
            help=f"descriptor set for HTTP/JSON transcoding (default {DEFAULT_DESCRIPTORS} "
            "if it exists, else gRPC only)",
        )
        s.add_argument("--no-transcoding", action="store_true", help="gateway serves gRPC only")
        s.add_argument("--host", default=DEFAULT_HOST, help="address Envoy's listeners bind")
        s.add_argument("--gateway-port", type=int, default=DEFAULT_GATEWAY_PORT)
        s.add_argument("--admin-port", type=int, default=DEFAULT_ADMIN_PORT)
        s.add_argument(
            "--instances",
            action="append",
            default=None,
            metavar="SVC=HOST:PORT,...",
            help="service instances (repeat a service for replicas); default one per service "
            "on 50051..50055",
        )
        s.add_argument(
            "--sidecar",
            action="append",
            default=None,
            metavar="SVC=PORT",
            help="client-side listener per called service (default: 15000 + port - 50000 of each "
            "service that others call, e.g. payment=15052)",
        )
        s.add_argument("--inbound-base-port", type=int, default=DEFAULT_INBOUND_BASE_PORT)
        s.add_argument(
            "--fault",
            action="append",
            default=[],
            metavar="SVC=JSON",
            help="override a destination's fault, e.g. "
            '\'promotion={"abort":{"grpcStatus":"UNAVAILABLE","percentage":{"value":50}}}\'',
        )
        s.add_argument(
            "--fault-placement",
            choices=("inbound", "outbound"),
            default="inbound",
            help="inbound (default): the destination is slow; outbound: Istio's client-side "
            "placement (delay not counted by timeout and circuit breaker)",
        )
        s.add_argument("--access-log", default=None, help="append an access log to this file")
        s.add_argument(
            "--mtls",
            default=None,
            metavar="DIR",
            help="mTLS between the proxies and RBAC on the inbound listeners, with the CA and "
            "certificates in DIR (`make up` keeps them in .run/pki); default plaintext",
        )
        s.add_argument("--validate", action="store_true", help="run envoy --mode validate")
    return p


def _policy(args: argparse.Namespace) -> MeshPolicy:
    policy = load_policy(args.values)
    for spec in args.fault:
        name, fault = fault_from_cli(spec)
        policy = policy.with_fault(name, fault)
    return policy


def _topology(args: argparse.Namespace) -> Topology:
    sidecars: dict[str, int] = dict(DEFAULT_SIDECAR_PORTS)
    if args.sidecar:
        sidecars = {}
        for spec in args.sidecar:
            for item in spec.split(","):
                name, sep, port = item.partition("=")
                if not sep or not port.strip().isdigit():
                    raise TopologyError(f"--sidecar {item!r}: expected SVC=PORT")
                sidecars[name.strip()] = int(port)
    return build_topology(
        parse_instances(args.instances) if args.instances else None,
        host=args.host,
        gateway_port=args.gateway_port,
        admin_port=args.admin_port,
        sidecar_ports=sidecars,
        inbound_base_port=args.inbound_base_port,
    )


def _mtls(folder: str | None, values: str) -> MeshTls | None:
    if folder is None:
        return None
    try:
        tls = MeshTls.in_dir(folder, identities=load_identities(values))
    except ValueError as e:
        raise RenderError(str(e)) from None
    if missing := tls.missing():
        raise RenderError(f"--mtls {folder}: {missing[0]} and {len(missing) - 1} more are missing")
    return tls


def _descriptors(args: argparse.Namespace) -> Path | None:
    if args.no_transcoding:
        return None
    if args.descriptors:
        return Path(args.descriptors)
    if Path(DEFAULT_DESCRIPTORS).is_file():
        return Path(DEFAULT_DESCRIPTORS)
    print(
        f"mesh: {DEFAULT_DESCRIPTORS} not found: the gateway serves gRPC only "
        "(generate the descriptor set for HTTP/JSON)",
        file=sys.stderr,
    )
    return None


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        topo = _topology(args)
        if args.command == "env":
            for k, v in topo.client_env().items():
                print(f"{k}={v}")
            return 0
        policy = _policy(args)
        options = RenderOptions(
            fault_placement=args.fault_placement,
            access_log_path=args.access_log,
            mtls=_mtls(args.mtls, args.values),
        )
        config = render_envoy_config(policy, topo, _descriptors(args), options=options)
        out = write_envoy_config(config, args.out)
        if args.validate:
            validate_config(out)
    except (PolicyError, TopologyError, RenderError, EnvoyError, OSError) as e:
        print(f"mesh: {e}", file=sys.stderr)
        return 2
    print(f"mesh: wrote {out}", file=sys.stderr)
    if args.command == "run":
        envoy = str(envoy_binary())
        cmd = [envoy, "-c", str(out), "-l", "warning", "--disable-hot-restart"]
        sys.stdout.flush()
        sys.stderr.flush()
        os.execv(envoy, cmd)
    return 0


if __name__ == "__main__":
    sys.exit(main())
