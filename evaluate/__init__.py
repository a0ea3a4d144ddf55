"""evaluate stage (see README)."""
