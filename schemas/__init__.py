"""The wire contract of bdscreen: pydantic models shared by the gateway, the workers and the CLI.

This package imports nothing from ``service`` or ``worker``.
"""
