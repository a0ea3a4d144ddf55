"""train stage (see README)."""
