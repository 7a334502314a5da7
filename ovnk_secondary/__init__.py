"""ovnk-secondary: OVN-Kubernetes compatible secondary networks (layer2, localnet) on OVN."""

__version__ = "0.1.0"
