"""Partner examples: fedguard with a model, data and Flower app of your own."""
