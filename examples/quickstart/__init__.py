"""A quickstart-style Flower app of our own, before and after adding fedguard."""
