"""The service kit: what every phoneseller service runs on.

Configuration, JSON logging with correlation ids, rich gRPC errors, health, the database and its
unit of work, the transactional outbox and its relay to JetStream, and durable consumers with an
inbox. Services import from the modules here; nothing here imports a service.
"""
