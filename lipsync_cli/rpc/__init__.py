"""The gRPC layer: the LipSync service and the original system's service (thin adapters over the core engine), and their client."""
