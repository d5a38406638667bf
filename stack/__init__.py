"""The local stack: nats-server, the five services (and the mesh's Envoy) under supervisord.

`python -m stack run|up|down|status`, wrapped by `make run`, `make up`, `make down`.
"""
