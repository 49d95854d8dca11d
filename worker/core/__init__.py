"""Torch-free parts shared by the gateway and the workers (a static test proves the gateway reaches no torch)."""
