"""kafka-mesh: the control plane of the per-host sidecar (the data plane is the meshcore package)."""

__version__ = "0.1.0"
