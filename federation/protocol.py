"""Protocol constants: message types and record keys, in one place and one spelling style.

Message types follow Flower 1.42's rule: ``train``, ``evaluate``, ``query`` or one of them plus
``.identifier``. Record keys are kebab-case.
"""

from __future__ import annotations

from typing import Final

__all__ = [
    "ARRAYS",
    "BLOB_GLOBAL",
    "BLOB_TAG",
    "BLOB_UPDATE",
    "CANDIDATES",
    "CFG",
    "CFG_NODE_ID",
    "CFG_ROUND",
    "CONFIG",
    "EVAL_EXAMPLES",
    "EVAL_EXTRA_PREFIX",
    "EVAL_LOSS",
    "EVAL_METRIC_PREFIX",
    "EVAL_PRIMARY",
    "GLOBAL_CIPHER",
    "GLOBAL_PLAIN",
    "GLOBAL_ROUND",
    "KEYS",
    "KEY_DENOMINATOR",
    "KEY_FINGERPRINT",
    "KEY_PRESET",
    "KEY_PUBLIC_CONTEXT",
    "KEY_RECIPIENT",
    "KEY_RECIPIENTS",
    "KEY_ROLE",
    "KEY_WRAPPED_PREFIX",
    "KEY_WRAPPED_SECRET",
    "KEY_WRAP_PUBLIC",
    "KEY_WRAP_PUBLICS",
    "METRICS",
    "MSG_EVALUATE",
    "MSG_KEYS_SETUP",
    "MSG_KEYS_WRAP",
    "MSG_SCREEN",
    "MSG_TRAIN",
    "MSG_VERIFY",
    "M_BYTES_UP",
    "M_CLIPPED_VALUES",
    "M_DECRYPT_SECONDS",
    "M_ENCRYPT_SECONDS",
    "M_EPSILON",
    "M_EVAL_SECONDS",
    "M_NOISE_MULTIPLIER",
    "M_PARTITION_ID",
    "M_STEPS",
    "M_TRAIN_LOSS",
    "M_TRAIN_SECONDS",
    "NODE_NUM_PARTITIONS",
    "NODE_PARTITION_ID",
    "NUM_EXAMPLES",
    "PROVENANCE",
    "PROV_ROUNDS",
    "PROV_SEEDS",
    "PROV_WEIGHTS",
    "ROLE_GENERATOR",
    "ROLE_MEMBER",
    "SCREEN",
    "SCREEN_COMMIT",
    "SCREEN_LENGTH",
    "SCREEN_NONCE",
    "SCREEN_REPETITIONS",
    "SCREEN_ROUND",
    "SCREEN_SEEDS",
    "SCREEN_TAGS",
    "SCREEN_UNBOUND",
    "SCREEN_VALUES",
    "STATUS",
    "STATUS_BUDGET_EXHAUSTED",
    "STATUS_CODE",
    "STATUS_ERROR",
    "STATUS_OK",
    "STATUS_REASON",
    "STATUS_REFUSED_GLOBAL",
    "UPDATE_CIPHER",
    "UPDATE_PLAIN",
    "VECTOR_ITEM",
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
SCREEN_NONCE: Final = "nonce"  # bytes: the round's nonce, committed to before the uploads
SCREEN_SEEDS: Final = "seeds"  # list[bytes]: the uploads' seeds, in the server's order
SCREEN_TAGS: Final = "tags"  # list[bytes]: each seed's upload tag (crypto.stats.upload_tag)
SCREEN_VALUES: Final = "values"  # list[int]: r residues per bound seed, row-major
SCREEN_UNBOUND: Final = "unbound"  # list[int]: indices of seeds whose tag failed (not projected)
SCREEN_COMMIT: Final = "screen-commit"  # bytes (KEYS of a CKKS train message): H(round, nonce)
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

# -- fields of STATUS (ConfigRecord of every reply) ----------------------------------------------
STATUS_CODE: Final = "code"  # str: one of the STATUS_* codes below
STATUS_REASON: Final = "reason"  # str: why, when the code is not STATUS_OK (at most 500 characters)

# -- fields of CFG (ConfigRecord; besides the flat run config of federation.config) ------------
CFG_ROUND: Final = "round"  # int >= 1: the round the message belongs to
CFG_NODE_ID: Final = "node-id"  # int: the receiving node, as the server knows it

# -- fields of KEYS (ConfigRecord) ---------------------------------------------------------------
KEY_ROLE: Final = "role"  # str (key setup request): ROLE_GENERATOR or ROLE_MEMBER
ROLE_GENERATOR: Final = "generator"  # makes the CKKS keys and wraps the secret for the others
ROLE_MEMBER: Final = "member"  # receives the wrapped secret
KEY_PRESET: Final = "preset"  # str: CKKS preset id (crypto.ckks.Preset)
KEY_WRAP_PUBLIC: Final = "wrap-public"  # bytes (setup reply): the trainer's 32-byte X25519 key
KEY_PUBLIC_CONTEXT: Final = "public-context"  # bytes (generator's setup reply)
KEY_FINGERPRINT: Final = "fingerprint"  # str (generator's setup reply): CKKS key fingerprint
KEY_RECIPIENTS: Final = "recipients"  # list[str] (wrap request): node ids to wrap for
KEY_WRAP_PUBLICS: Final = "wrap-publics"  # list[bytes] (wrap request), aligned with recipients
KEY_WRAPPED_PREFIX: Final = "blob-"  # blob-<recipient>: bytes (wrap reply), one per recipient
KEY_WRAPPED_SECRET: Final = "wrapped-secret"  # bytes (train, once): this trainer's wrapped secret
KEY_RECIPIENT: Final = "recipient"  # str: whom KEY_WRAPPED_SECRET is wrapped for
KEY_DENOMINATOR: Final = "denominator"  # int: the decrypted global sum is divided by it

# -- items of the byte records (federation.records.bytes_record) ---------------------------------
BLOB_GLOBAL: Final = "g"  # in GLOBAL_CIPHER: the encrypted global model's envelope
BLOB_UPDATE: Final = "u"  # in UPDATE_CIPHER: the encrypted update's envelope
BLOB_TAG: Final = "t"  # in UPDATE_CIPHER: the upload's screening tag (32 bytes)
VECTOR_ITEM: Final = "v"  # in GLOBAL_PLAIN / UPDATE_PLAIN / CANDIDATES: a flat float32 vector

# -- fields of a train reply's METRICS record (besides the EVAL_* fields above) -------------------
M_PARTITION_ID: Final = "partition-id"  # int: the trainer's data partition (its client label)
M_STEPS: Final = "steps"  # int: DP-SGD steps of this round
M_EPSILON: Final = "epsilon"  # float: ε of the trainer's whole ledger after this round
M_NOISE_MULTIPLIER: Final = "noise-multiplier"  # float: sigma of this round
M_TRAIN_LOSS: Final = "train-loss"  # float: mean training loss
M_BYTES_UP: Final = "bytes-up"  # int: bytes of the encrypted update
M_CLIPPED_VALUES: Final = "clipped-values"  # int: update values clipped to the CKKS value bound
M_TRAIN_SECONDS: Final = "train-seconds"  # float: wall time of local training
M_ENCRYPT_SECONDS: Final = "encrypt-seconds"  # float: wall time of encrypting the update
M_DECRYPT_SECONDS: Final = "decrypt-seconds"  # float: wall time of decrypting the global model
M_EVAL_SECONDS: Final = "eval-seconds"  # float: wall time of evaluating the received model
EVAL_EXTRA_PREFIX: Final = "eval-x-"  # eval-x-NAME (+ eval-x-NAME-examples): hook metrics, e.g. asr

# -- node config keys a trainer reads (set by the simulation engine or `fedguard client`) --------
NODE_PARTITION_ID: Final = "partition-id"  # int: which partition of the data this node holds
NODE_NUM_PARTITIONS: Final = "num-partitions"  # int: how many partitions the data is split into

# -- reply status codes (ConfigRecord STATUS, key "code") ----------------------------------------
STATUS_OK: Final = "ok"
STATUS_BUDGET_EXHAUSTED: Final = "budget-exhausted"
STATUS_ERROR: Final = "error"
STATUS_REFUSED_GLOBAL: Final = "refused-global"  # the trainer refused the global it received
