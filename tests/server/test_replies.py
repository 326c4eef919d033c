"""An error reply becomes one readable line: no ANSI codes, no traceback, the cause named, and
a node that is not fedguard-capable said to be so."""

from __future__ import annotations

from server.replies import NOT_FEDGUARD_CAPABLE, describe_error_reply

RAY_REASON = (
    "<class 'ray.exceptions.RayTaskError(ClientAppException)'>:<'\x1b[36mray::ClientAppActor.run()"
    "\x1b[39m (pid=1, ip=192.0.2.2)\n  File \"app.py\", line 3, in train_fn\n"
    "    net.load_state_dict(msg.content[\"arrays\"])\nKeyError: 'arrays'\n\nThe above exception "
    "was the direct cause of the following exception:\n\nray::ClientAppActor.run()\n"
    "flwr.clientapp.client_app.ClientAppException: \nException ClientAppException occurred. "
    "Message: 'arrays''>" + " padding" * 200
)


def test_a_cut_ray_traceback_becomes_its_cause_in_one_line() -> None:
    line = describe_error_reply(2, RAY_REASON)
    assert line.startswith("error-reply: code 2: KeyError: 'arrays'")
    assert NOT_FEDGUARD_CAPABLE in line
    assert "\x1b" not in line and "\n" not in line and "Traceback" not in line and "ray::" not in line


def test_an_unregistered_fedguard_message_type_names_the_missing_handler() -> None:
    reason = ("<class 'ray.exceptions.RayTaskError(ClientAppException)'>:<'\x1b[36mray::x\x1b[39m\n"
              "ValueError: No query function registered with name 'keys''>")
    line = describe_error_reply(2, reason)
    assert NOT_FEDGUARD_CAPABLE in line and "'query.keys' handler" in line


def test_a_reply_without_a_reason_and_a_plain_reason() -> None:
    assert describe_error_reply(5, None) == "error-reply: code 5: no reason"
    assert describe_error_reply(3, "node lost") == "error-reply: code 3: node lost"
    assert len(describe_error_reply(1, "x" * 5000)) < 340
