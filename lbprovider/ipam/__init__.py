"""ipam package."""
