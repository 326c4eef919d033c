"""fedguard: clients."""
