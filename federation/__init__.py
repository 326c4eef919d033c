"""fedguard: federation."""
