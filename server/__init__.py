"""fedguard: server."""
