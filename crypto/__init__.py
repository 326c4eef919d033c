"""fedguard: crypto."""
