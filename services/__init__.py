"""The five phoneseller services and the runtime they share (`services.kit`)."""
