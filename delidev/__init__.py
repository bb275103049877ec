"""DeliDev Main Server: the hub that orchestrates AI coding agents."""

__version__ = "0.1.0"
