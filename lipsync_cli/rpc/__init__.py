"""The gRPC layer: the LipSync service and the original system's service (thin adapters over the core engine), and their client."""

import os

# gRPC's C core writes its INFO lines to stderr until logging is set up (for example "Got goaway"
# when an embedded server stops under a failed render): a CLI error must stay one line. Read when
# gRPC starts, so set before any module of this package imports grpc; an operator's setting wins.
os.environ.setdefault("GRPC_VERBOSITY", "ERROR")
