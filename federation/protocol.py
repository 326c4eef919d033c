"""Protocol constants: message types and record keys, in one place and one spelling style.

Message types follow Flower 1.42's rule: ``train``, ``evaluate``, ``query`` or one of them plus
``.identifier``. Record keys are kebab-case.
"""

from __future__ import annotations

from typing import Final

__all__ = [
    "ARRAYS",
    "CANDIDATES",
    "CFG",
    "CONFIG",
    "EVAL_EXAMPLES",
    "EVAL_LOSS",
    "EVAL_METRIC_PREFIX",
    "EVAL_PRIMARY",
    "GLOBAL_CIPHER",
    "GLOBAL_PLAIN",
    "GLOBAL_ROUND",
    "KEYS",
    "METRICS",
    "MSG_EVALUATE",
    "MSG_KEYS_SETUP",
    "MSG_KEYS_WRAP",
    "MSG_SCREEN",
    "MSG_TRAIN",
    "MSG_VERIFY",
    "NUM_EXAMPLES",
    "PROVENANCE",
    "PROV_ROUNDS",
    "PROV_SEEDS",
    "PROV_WEIGHTS",
    "SCREEN",
    "SCREEN_LENGTH",
    "SCREEN_NONCE",
    "SCREEN_REPETITIONS",
    "SCREEN_ROUND",
    "SCREEN_SEEDS",
    "SCREEN_VALUES",
    "STATUS",
    "STATUS_BUDGET_EXHAUSTED",
    "STATUS_ERROR",
    "STATUS_OK",
    "STATUS_REFUSED_GLOBAL",
    "UPDATE_CIPHER",
    "UPDATE_PLAIN",
    "VOTE",
    "VOTE_ACCEPT",
    "VOTE_REASON",
    "VOTE_ROUND",
]

# -- message types ------------------------------------------------------------------------------
MSG_TRAIN: Final = "train"  # global model in, update + evaluation of the received model out
MSG_EVALUATE: Final = "evaluate"  # final evaluation of the last global model
MSG_KEYS_SETUP: Final = "query.keys"  # in-band keys: every trainer sends its wrap key; one generates
MSG_KEYS_WRAP: Final = "query.wrap"  # in-band keys: the generator wraps the secret for each trainer
MSG_SCREEN: Final = "query.screen"  # key holders answer seed-bound projections (crypto.stats)
MSG_VERIFY: Final = "query.verify"  # attribution: trainers check candidate globals (group sums)

# -- record keys ---------------------------------------------------------------------------------
CFG: Final = "cfg"  # ConfigRecord: round, run settings the client needs
METRICS: Final = "metrics"  # MetricRecord: sample counts, loss, accuracy, epsilon, timings
STATUS: Final = "status"  # ConfigRecord: status code and reason of a reply
GLOBAL_PLAIN: Final = "global"  # ArrayRecord: plaintext global model (float32, flat)
GLOBAL_CIPHER: Final = "global-enc"  # ArrayRecord: encrypted global model (uint8 envelope)
UPDATE_PLAIN: Final = "update"  # ArrayRecord: plaintext update (float32, flat)
UPDATE_CIPHER: Final = "update-enc"  # ArrayRecord: encrypted update (uint8 envelope)
KEYS: Final = "keys"  # ConfigRecord: public keys, wrapped secrets, public context (bytes)
SCREEN: Final = "screen"  # ConfigRecord (request) / MetricRecord (answer) of the screen phase

# -- field keys of the screen exchange (crypto.stats.Challenge) ---------------------------------
SCREEN_ROUND: Final = "round"  # int: the round being screened
SCREEN_REPETITIONS: Final = "repetitions"  # int: projections per upload (r)
SCREEN_LENGTH: Final = "length"  # int: values per update
SCREEN_NONCE: Final = "nonce"  # bytes: the server's fresh nonce, drawn after all uploads
SCREEN_SEEDS: Final = "seeds"  # list[bytes]: the uploads' seeds, in the server's order
SCREEN_VALUES: Final = "values"  # list[int]: the key holder's n * r residues, row-major
PROVENANCE: Final = "provenance"  # ConfigRecord: which uploads (seed, weight, round) a global sums
CANDIDATES: Final = "candidates"  # ArrayRecord: candidate globals of an attribution request
VOTE: Final = "vote"  # ConfigRecord: a trainer's verdict on the global(s) it received

# -- provenance fields (ConfigRecord PROVENANCE; candidate i prefixes them with "c{i:03d}-") -------
PROV_SEEDS: Final = "seeds"  # bytes: the 32-byte seeds of the summed seeded uploads, concatenated
PROV_WEIGHTS: Final = "weights"  # list[int]: each upload's integer weight
PROV_ROUNDS: Final = "rounds"  # list[int]: the round each upload was aggregated in
GLOBAL_ROUND: Final = "global-round"  # int (CFG): newest round whose aggregate the global includes

# -- vote fields (ConfigRecord VOTE) ---------------------------------------------------------------
VOTE_ROUND: Final = "global-round"  # int: the global-round the verdict is about
VOTE_ACCEPT: Final = "accept"  # bool (train/evaluate) or list[bool] (verify, one per candidate)
VOTE_REASON: Final = "reason"  # str, or list[str] for verify

# -- Flower's standard record names and sample-count key (what its strategies and mods use); the
# partner-app building blocks (clients/mods.py, server/strategy.py) speak them to user code
ARRAYS: Final = "arrays"  # ArrayRecord: the model as named arrays (a state_dict)
CONFIG: Final = "config"  # ConfigRecord: the user strategy's train / evaluate config
NUM_EXAMPLES: Final = "num-examples"  # MetricRecord key: examples a reply is weighted by

# -- evaluation fields of a reply's METRICS record (the received global model on local test data)
EVAL_EXAMPLES: Final = "eval-examples"  # test examples evaluated (the weight of the values below)
EVAL_LOSS: Final = "eval-loss"  # mean of the task's per-example loss
EVAL_PRIMARY: Final = "eval-primary"  # mean of the task's primary metric (any finite number)
EVAL_METRIC_PREFIX: Final = "eval-m-"  # eval-m-NAME: mean of the task's metric NAME

# -- reply status codes (ConfigRecord STATUS, key "code") ----------------------------------------
STATUS_OK: Final = "ok"
STATUS_BUDGET_EXHAUSTED: Final = "budget-exhausted"
STATUS_ERROR: Final = "error"
STATUS_REFUSED_GLOBAL: Final = "refused-global"  # the trainer refused the global it received
