"""fedguard: simulations."""
