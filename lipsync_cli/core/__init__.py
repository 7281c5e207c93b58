"""The core engine: the clock, the mouth driver, the mouth generators, the compositor and the engine that chains them.

Imports only `media` and the package's base modules; never gRPC, HTTP, windows or the CLI.
"""
