"""quickstart: a small Flower 1.42 app (digits MLP, FedAvg)."""
