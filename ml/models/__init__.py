"""Models of access sequences."""
