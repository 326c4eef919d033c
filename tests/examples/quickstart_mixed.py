"""Run the converted quickstart app on 4 simulated nodes, node 3 left unconverted (a helper the
example test runs in a subprocess: Ray is started and stopped in a process of its own).

Usage: ``python tests/examples/quickstart_mixed.py OUT_DIR ROUNDS``
"""

from __future__ import annotations

import os
import sys
import warnings

from flwr.app import Context, Message
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid, ServerApp

from examples.quickstart.quickstart import client_app, client_app_fedguard, server_app_fedguard
from simulations.simulate import SIM_CPUS_ENV, quiet_flower

VANILLA_PARTITION = 3  # 3 converted nodes: CKKS aggregates need group-size (3) uploads


def route(msg: Message, context: Context) -> Message:
    vanilla = context.node_config["partition-id"] == VANILLA_PARTITION
    if vanilla and msg.metadata.message_type in ("train", "evaluate"):
        return client_app.app(msg, context)
    return client_app_fedguard.app(msg, context)


def main(out_dir: str, rounds: int) -> None:
    quiet_flower()
    from flwr.simulation import run_simulation

    mixed = ClientApp()
    for register in (mixed.train(), mixed.evaluate(), mixed.query("keys"), mixed.query("wrap"),
                     mixed.query("screen")):
        register(route)
    server = ServerApp()

    @server.main()
    def _main(grid: Grid, context: Context) -> None:
        context.run_config.update({"out-dir": out_dir, "num-server-rounds": rounds,
                                   "num-nodes": 4})
        server_app_fedguard.main(grid, context)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        run_simulation(server_app=server, client_app=mixed, num_supernodes=4, backend_config={
            "client_resources": {"num_cpus": 1, "num_gpus": 0.0},
            # as many actors as simulations.simulate would start (the suite sets one)
            "init_args": {"num_cpus": int(os.environ.get(SIM_CPUS_ENV, "") or os.cpu_count() or 1),
                          "num_gpus": 0, "include_dashboard": False}})


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]))
