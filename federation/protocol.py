"""Protocol constants: message types and record keys, in one place and one spelling style.

Message types follow Flower 1.42's rule: ``train``, ``evaluate``, ``query`` or one of them plus
``.identifier``. Record keys are kebab-case.
"""

from __future__ import annotations

from typing import Final

__all__ = [
    "CFG",
    "EVAL_EXAMPLES",
    "EVAL_LOSS",
    "EVAL_METRIC_PREFIX",
    "EVAL_PRIMARY",
    "GLOBAL_CIPHER",
    "GLOBAL_PLAIN",
    "KEYS",
    "METRICS",
    "MSG_EVALUATE",
    "MSG_KEYS_SETUP",
    "MSG_KEYS_WRAP",
    "MSG_SCREEN",
    "MSG_TRAIN",
    "SCREEN",
    "STATUS",
    "STATUS_BUDGET_EXHAUSTED",
    "STATUS_ERROR",
    "STATUS_OK",
    "UPDATE_CIPHER",
    "UPDATE_PLAIN",
]

# -- message types ------------------------------------------------------------------------------
MSG_TRAIN: Final = "train"  # global model in, update + evaluation of the received model out
MSG_EVALUATE: Final = "evaluate"  # final evaluation of the last global model
MSG_KEYS_SETUP: Final = "query.keys"  # in-band keys: every trainer sends its wrap key; one generates
MSG_KEYS_WRAP: Final = "query.wrap"  # in-band keys: the generator wraps the secret for each trainer
MSG_SCREEN: Final = "query.screen"  # key holders decrypt masked scalar statistics

# -- record keys ---------------------------------------------------------------------------------
CFG: Final = "cfg"  # ConfigRecord: round, run settings the client needs
METRICS: Final = "metrics"  # MetricRecord: sample counts, loss, accuracy, epsilon, timings
STATUS: Final = "status"  # ConfigRecord: status code and reason of a reply
GLOBAL_PLAIN: Final = "global"  # ArrayRecord: plaintext global model (float32, flat)
GLOBAL_CIPHER: Final = "global-enc"  # ArrayRecord: encrypted global model (uint8 envelope)
UPDATE_PLAIN: Final = "update"  # ArrayRecord: plaintext update (float32, flat)
UPDATE_CIPHER: Final = "update-enc"  # ArrayRecord: encrypted update (uint8 envelope)
KEYS: Final = "keys"  # ConfigRecord: public keys, wrapped secrets, public context (bytes)
SCREEN: Final = "screen"  # ArrayRecord / MetricRecord of the screen phase

# -- evaluation fields of a reply's METRICS record (the received global model on local test data)
EVAL_EXAMPLES: Final = "eval-examples"  # test examples evaluated (the weight of the values below)
EVAL_LOSS: Final = "eval-loss"  # mean of the task's per-example loss
EVAL_PRIMARY: Final = "eval-primary"  # mean of the task's primary metric (any finite number)
EVAL_METRIC_PREFIX: Final = "eval-m-"  # eval-m-NAME: mean of the task's metric NAME

# -- reply status codes (ConfigRecord STATUS, key "code") ----------------------------------------
STATUS_OK: Final = "ok"
STATUS_BUDGET_EXHAUSTED: Final = "budget-exhausted"
STATUS_ERROR: Final = "error"
