"""The FastAPI gateway: HTTP only. It never imports torch (tests/service/test_imports.py checks)."""
