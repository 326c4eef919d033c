"""Error replies from the grid cost one reply, whatever Flower leaves out of them."""

from __future__ import annotations

from flwr.app import Error, Message

from clients.app import app as client_app
from federation import protocol as P
from federation.config import from_flat
from server.app import make_scheme
from server.loop import run_federation


def test_an_error_reply_without_a_reason_costs_one_reply(fake_grid, recorder) -> None:
    cfg = from_flat({"num-clients": 3, "num-server-rounds": 1, "partition": "iid",
                     "data-dir": "subset", "batch-size": 32})

    def tamper(node: int, reply: Message) -> Message | Error:
        if node == 101 and reply.metadata.message_type == P.MSG_TRAIN:
            return Error(code=3)  # Flower's Error.reason is `str | None`; here it is None
        return reply

    rec = recorder()
    result = run_federation(fake_grid(client_app, 3, tamper=tamper), cfg, make_scheme(cfg), observer=rec)
    assert result.rounds_completed == 1 and not result.stopped_early
    assert sorted(rec.rounds[0].accepted) == [100, 102]
    assert rec.rounds[0].refused[101] == "lost: error-reply: code 3: no reason"
    assert any(e.get("node") == 101 and e.get("event") == "lost" for e in rec.audit)
