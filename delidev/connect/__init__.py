"""Connect RPC transport: thin handlers over ``delidev.services``."""
