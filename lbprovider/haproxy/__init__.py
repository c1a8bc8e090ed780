"""haproxy package."""
