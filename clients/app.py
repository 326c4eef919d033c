"""Flower entry point of the trainer role: ``clients.app:app`` (a ClientApp).

Every handler turns an unexpected failure into an error *reply* with a short reason, so a
bad message costs one reply, never the node. Secrets never reach the reason text: only the
exception type and fedguard's own messages (which carry no key material) are sent.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Any

from flwr.app import ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from clients.handlers import NO_HOOKS, ClientHooks, handle_evaluate, handle_train
from federation import protocol as P
from federation.errors import FedguardError

__all__ = ["app", "make_client_app"]

log = logging.getLogger("fedguard.client")

HooksFactory = Callable[[Mapping[str, Any]], ClientHooks]


def _error_reply(msg: Message, exc: BaseException) -> Message:
    reason = str(exc) if isinstance(exc, FedguardError) else type(exc).__name__
    log.warning("could not handle %s: %s", msg.metadata.message_type, reason)
    return Message(
        RecordDict({
            P.STATUS: ConfigRecord({"code": P.STATUS_ERROR, "reason": reason[:500]}),
            P.METRICS: MetricRecord({}),
        }),
        reply_to=msg,
    )


def make_client_app(hooks_factory: HooksFactory | None = None) -> ClientApp:
    """Build the trainer ClientApp; ``hooks_factory(node_config)`` may compose in behaviour."""
    client_app = ClientApp()

    def hooks_for(context: Context) -> ClientHooks:
        return hooks_factory(context.node_config) if hooks_factory else NO_HOOKS

    @client_app.train()
    def train(msg: Message, context: Context) -> Message:
        try:
            content = handle_train(msg.content, context.state, context.node_config,
                                   context.run_id, hooks_for(context))
        except Exception as exc:  # noqa: BLE001 - one bad message must not kill the node
            return _error_reply(msg, exc)
        return Message(content, reply_to=msg)

    @client_app.evaluate()
    def evaluate(msg: Message, context: Context) -> Message:
        try:
            content = handle_evaluate(msg.content, context.state, context.node_config,
                                      context.run_id, hooks_for(context))
        except Exception as exc:  # noqa: BLE001
            return _error_reply(msg, exc)
        return Message(content, reply_to=msg)

    @client_app.query("keys")
    def keys(msg: Message, context: Context) -> Message:
        from clients import encrypted

        try:
            content = encrypted.handle_keys_setup(msg.content, context.state, context.node_config,
                                                  context.run_id)
        except Exception as exc:  # noqa: BLE001
            return _error_reply(msg, exc)
        return Message(content, reply_to=msg)

    @client_app.query("wrap")
    def wrap(msg: Message, context: Context) -> Message:
        from clients import encrypted

        try:
            content = encrypted.handle_keys_wrap(msg.content, context.state, context.run_id)
        except Exception as exc:  # noqa: BLE001
            return _error_reply(msg, exc)
        return Message(content, reply_to=msg)

    @client_app.query("screen")
    def screen(msg: Message, context: Context) -> Message:
        from clients import encrypted

        try:
            content = encrypted.handle_screen(msg.content, context.state, context.node_config,
                                              context.run_id)
        except Exception as exc:  # noqa: BLE001
            return _error_reply(msg, exc)
        return Message(content, reply_to=msg)

    return client_app


app = make_client_app()
