"""The `phoneseller` command-line client: a thin, typed layer over the generated gRPC stubs.

`client.api` talks to the system (through the gateway, or to each service directly),
`client.tables` turns answers and errors into text, `client.demo` plays the seed's story and
`client.cli` is the command itself.
"""
