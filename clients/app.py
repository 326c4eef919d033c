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

from clients import encrypted
from clients.handlers import NO_HOOKS, ClientHooks, handle_evaluate, handle_train, handle_verify
from federation import protocol as P
from federation.errors import FedguardError

__all__ = ["app", "make_client_app", "register_key_holder_queries"]

log = logging.getLogger("fedguard.client")

HooksFactory = Callable[[Mapping[str, Any]], ClientHooks]


def _error_reply(msg: Message, exc: BaseException) -> Message:
    reason = str(exc) if isinstance(exc, FedguardError) else type(exc).__name__
    log.warning("could not handle %s: %s", msg.metadata.message_type, reason)
    return Message(
        RecordDict({
            P.STATUS: ConfigRecord({P.STATUS_CODE: P.STATUS_ERROR, P.STATUS_REASON: reason[:500]}),
            P.METRICS: MetricRecord({}),
        }),
        reply_to=msg,
    )


Handler = Callable[[RecordDict, Context], RecordDict]


def _guarded(handler: Handler) -> Callable[[Message, Context], Message]:
    """Run ``handler`` on the message content; any failure becomes an error reply."""

    def run(msg: Message, context: Context) -> Message:
        try:
            content = handler(msg.content, context)
        except Exception as exc:  # noqa: BLE001 - one bad message must not kill the node
            return _error_reply(msg, exc)
        return Message(content, reply_to=msg)

    return run


def _query(message_type: str) -> str:
    """The action Flower's ``@app.query(action)`` takes for ``query.<action>``."""
    return message_type.split(".", 1)[1]


def register_key_holder_queries(client_app: ClientApp) -> ClientApp:
    """Register a CKKS key holder's query handlers on ``client_app``; return it.

    In-band key setup (``query.keys``, ``query.wrap``) and screening (``query.screen``), each
    guarded (a failure is an error reply). Shared by fedguard's ClientApp and
    :func:`clients.mods.enable_fedguard` (a partner's ClientApp).
    """
    client_app.query(_query(P.MSG_KEYS_SETUP))(_guarded(lambda c, ctx: encrypted.handle_keys_setup(
        c, ctx.state, ctx.node_config, ctx.run_id)))
    client_app.query(_query(P.MSG_KEYS_WRAP))(_guarded(lambda c, ctx: encrypted.handle_keys_wrap(
        c, ctx.state, ctx.run_id)))
    client_app.query(_query(P.MSG_SCREEN))(_guarded(lambda c, ctx: encrypted.handle_screen(
        c, ctx.state, ctx.node_config, ctx.run_id)))
    return client_app


def make_client_app(hooks_factory: HooksFactory | None = None) -> ClientApp:
    """Build the trainer ClientApp; ``hooks_factory(node_config)`` may compose in behaviour.

    Each message handler takes its transport from :func:`clients.schemes.trainer_scheme`
    (through :mod:`clients.handlers`); this module only binds them to Flower.
    """
    client_app = ClientApp()

    def hooks_for(context: Context) -> ClientHooks:
        return hooks_factory(context.node_config) if hooks_factory else NO_HOOKS

    client_app.train()(_guarded(lambda c, ctx: handle_train(
        c, ctx.state, ctx.node_config, ctx.run_id, hooks_for(ctx))))
    client_app.evaluate()(_guarded(lambda c, ctx: handle_evaluate(
        c, ctx.state, ctx.node_config, ctx.run_id, hooks_for(ctx))))
    client_app.query(_query(P.MSG_VERIFY))(_guarded(lambda c, ctx: handle_verify(
        c, ctx.state, ctx.node_config, ctx.run_id)))
    return register_key_holder_queries(client_app)


app = make_client_app()
