"""The upload check's state in a scan record (``validation``), read by the gateway and the workers alike.

``None``: not started. ``{"attempts": n}``: started n times without an outcome (a check whose worker died
leaves this behind). ``{"ok": true}`` or ``{"category": ..., "message": ...}``: the outcome.
"""


def validation_done(validation: dict | None) -> bool:
    """True once the upload check has an outcome; ``{"attempts": n}`` only counts the checks started."""
    return validation is not None and ("ok" in validation or "category" in validation)
