"""Results stage: the fitted model's verbs, tables, printing and files (no engine imports)."""

PREDICT_TYPES = ("response", "link", "class")
"""The scales ``predict(type=...)`` offers."""
