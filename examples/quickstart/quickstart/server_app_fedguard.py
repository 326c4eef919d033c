"""quickstart: a Flower ServerApp running FedAvg."""

from flwr.app import ArrayRecord, ConfigRecord, Context
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import FedAvg, Strategy

from server.strategy import FedguardStrategy, fedguard_config

from .task import Net

app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    num_rounds = int(context.run_config.get("num-server-rounds", 3))
    nodes = int(context.run_config.get("num-nodes", 2))
    strategy: Strategy = FedAvg(fraction_train=1.0, min_train_nodes=nodes, min_available_nodes=nodes)
    # group-size 2: a two-node federation; each trainer can then read the other's (DP) update
    settings = {"secure-aggregation": "ckks", "defense": "norm", "dp-epsilon": 8.0,
                "max-grad-norm": 1.0, "group-size": 2}
    settings.update(fedguard_config(context.run_config))
    strategy = FedguardStrategy(strategy, settings, primary_metric="eval_acc")
    result = strategy.start(
        grid=grid, initial_arrays=ArrayRecord(Net().state_dict()), num_rounds=num_rounds,
        train_config=ConfigRecord({"lr": 0.1}),
    )
    print("final evaluation:", result.evaluate_metrics_clientapp.get(num_rounds))
