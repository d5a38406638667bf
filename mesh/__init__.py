"""The local service mesh: one resilience policy (the chart's `mesh:` values) rendered as Envoy.

In a cluster the chart renders the policy as Istio VirtualServices and DestinationRules; on one
machine `mesh` renders the same numbers into one Envoy process that plays the ingress gateway,
the client-side (outbound) sidecars and the server-side (inbound) sidecars. See docs/mesh.md.

Public API:

- `mesh.policy`: `load_policy`, `parse_policy`, `parse_fault`, `MeshPolicy.with_fault`, `Duration`.
- `mesh.topology`: `build_topology`, `default_topology`, `Topology` (`client_env()`), `Address`.
- `mesh.envoy`: `render_envoy_config`, `write_envoy_config`, `RenderOptions`, `cluster_name`.
- `mesh.security`: `MeshTls.in_dir` (mTLS + RBAC for `RenderOptions.mtls`), `load_identities`
  (the chart's SPIFFE principals), `authorization` (the chart's AuthorizationPolicies as grants).
- `mesh.process`: `EnvoyProcess` (start / wait_ready / stop / restart), `AdminClient` (stats,
  cluster_stats, hosts, wait_healthy), `validate_config`, `envoy_binary`.
- `mesh.testing`: `MeshHarness`, `FakeBackend`, `local_topology`, `call_unary`, `free_port`.
"""
