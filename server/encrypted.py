"""The server's side of CKKS: aggregation and screening on ciphertexts, with a public context.

The server never holds a secret key. It keeps the global model encrypted as
``S = K * (G - G0)``, the sum of all accepted weighted updates so far (``K`` =
:data:`~federation.aggregation.WEIGHT_DENOMINATOR`, ``G0`` the public seeded initial model):
each round it adds ``sum_i w_i * enc(update_i)`` with integer weights that sum to ``K``, which
costs no multiplicative level and no fresh encryption. Trainers decrypt and compute
``G = G0 + S / K``. Round 1 sends ``G0`` in plaintext (it is public).

Every round's ``S`` is kept (the newest few ciphertexts), so a global that the trainers
refuse is rolled back to the one before it (:meth:`CkksScheme.rollback`). Each global travels
with its *provenance*: the public seed, weight and round of every upload it sums. A trainer
recomputes ``c1`` from the seeds (:mod:`crypto.provenance`) before it decrypts, counts the
uploads per round (at least ``group-size``) and checks the weights against the cap; so the
server cannot pass off a fresh encryption, a smaller sum or other weights as the global.
Attribution (:meth:`CkksScheme.candidate_records`) sends several candidate globals, each the
previous global plus one disjoint group of the refused round's uploads, under the same rules.

Keys come either from a provisioned server bundle (``key-dir``) or from the in-band setup
(:meth:`CkksScheme.setup`): one trainer generates the CKKS keys and wraps the secret for each
other trainer; the server only relays opaque blobs and keeps the public context.

Screening (when a defence is on): seed-bound random projections (:mod:`crypto.stats`,
docs/soundness.md). Each round's nonce is drawn when the round starts; its commitment travels
in the train messages and each upload comes back with a tag binding its seed to it. The server
projects each upload's ``c0`` itself; key holders project the seed parts ``a_i * s`` (never
seeing ``c0``). An answer counts only when ``f + 1`` key holders gave it identically
(:func:`crypto.stats.reconcile`; ``f`` = ``max-malicious``), so at least one of them is honest:
the quorum is ``max(screen-quorum, f + 1)`` holders and must agree, and when it does not, every
other trainer of the round is asked too. A key holder whose answer differs is reported and
asked last from then on. Out-of-bound updates are rejected with a ``statistic:*`` reason; the
filters decide on norms and distances estimated from the same projections.
"""

from __future__ import annotations

import logging
import os
import random
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from flwr.app import ConfigRecord, RecordDict

from crypto import EncryptedVector, Preset, PublicContext, add, weighted_sum, wire
from crypto.keys import load_server_bundle
from crypto.provenance import SEED_BYTES, upload_seed
from crypto.stats import (
    NONCE_BYTES,
    TAG_BYTES,
    Challenge,
    ScreenParameters,
    check_projections,
    combine,
    commitment,
    new_challenge,
    reconcile,
    screen_parameters,
    server_projections,
    sketch_statistics,
)
from federation import protocol as P
from federation.aggregation import WEIGHT_DENOMINATOR
from federation.config import FedConfig
from federation.errors import (
    ConfigError,
    CryptoError,
    InvalidCiphertext,
    KeyMismatch,
    ProtocolError,
    RejectedUpdate,
)
from federation.records import bytes_record, record_bytes, vector_record
from federation.robust import UpdateStats, resolve_max_malicious
from server.loop import exchange

__all__ = ["CkksScheme", "provenance_record"]

log = logging.getLogger("fedguard.server")

_KEPT_GLOBALS = 4  # ciphertexts of the newest rounds kept for rollback (older ones: provenance only)

Provenance = list[tuple[bytes, int, int]]  # (seed, weight, round) of every summed upload


def provenance_record(entries: Sequence[Provenance], *, candidates: bool = False) -> ConfigRecord:
    """The PROVENANCE record of one global, or (``candidates``) of several candidate globals.

    Candidate ``i``'s fields are prefixed ``c{i:03d}-``; a single global's are not.
    """
    out: dict[str, Any] = {}
    for i, prov in enumerate(entries):
        prefix = f"c{i:03d}-" if candidates else ""
        out[prefix + P.PROV_SEEDS] = b"".join(seed for seed, _w, _r in prov)
        out[prefix + P.PROV_WEIGHTS] = [int(w) for _s, w, _r in prov]
        out[prefix + P.PROV_ROUNDS] = [int(r) for _s, _w, r in prov]
    return ConfigRecord(out)


class CkksScheme:
    """Encrypted transport (see the module docstring). Holds a :class:`PublicContext` only."""

    name = "ckks"

    def __init__(self, initial: npt.NDArray[np.float32], cfg: FedConfig,
                 rng: random.Random | None = None) -> None:
        self.initial = initial.astype(np.float32, copy=True)
        self.dim = int(initial.shape[0])
        self.cfg = cfg
        # Projection screening is linear: the aggregation preset serves filtering too.
        self.preset = Preset.AGGREGATION
        try:  # fails early, naming the key, when the modulus cannot certify the bound
            self.screen_params: ScreenParameters = screen_parameters(
                self.preset, self.dim, cfg.defense.screen_norm_bound, max_weight=WEIGHT_DENOMINATOR)
        except ValueError as exc:
            raise ConfigError("screen-norm-bound", str(exc)) from None
        self._nonce = os.urandom
        self.public: PublicContext | None = None
        self.global_enc: EncryptedVector | None = None
        self._global_blob: bytes | None = None
        self._restored_blob: bytes | None = None
        self._wrapped: dict[int, bytes] = {}
        self._audit: list[dict[str, Any]] = []
        self._rng = rng or random.SystemRandom()
        self._round_nodes: list[int] = []
        self._prov: Provenance = []
        # (round, S after it or None once dropped, provenance length after it)
        self._history: list[tuple[int, EncryptedVector | None, int]] = []
        self._floor = 0  # history entries that cannot be rolled back (a restored checkpoint)
        self._seen_seeds: set[bytes] = set()
        self._restored_round = 0
        self._round_nonce: tuple[int, bytes] | None = None  # secret until the round's screening
        self._tags: dict[bytes, bytes] = {}  # upload seed -> its tag, this round
        self._distrusted: set[int] = set()  # key holders that disagreed with an agreed answer
        self._silent: set[int] = set()  # key holders that did not answer a screening request

    hides_updates = True

    @property
    def validates_uploads(self) -> bool:
        """Projection screening (the validity check) needs the single-prime AGGREGATION
        preset; keys provisioned with another preset aggregate without it (and refuse a
        filter at :meth:`setup`)."""
        return self.preset is Preset.AGGREGATION

    @property
    def global_round(self) -> int:
        """The newest round whose aggregate the global includes (0: the initial model)."""
        return self._history[-1][0] if self._history else 0

    # -- keys -----------------------------------------------------------------------------
    def setup(self, grid: Any, nodes: Sequence[int], cfg: FedConfig) -> None:
        """Obtain the public context: from the server bundle, or by the in-band setup."""
        self._round_nodes = list(nodes)
        if cfg.secure.key_dir:
            bundle = load_server_bundle(Path(cfg.secure.key_dir))
            public = PublicContext.from_bytes(bundle.ckks_public)
            if public.fingerprint != bundle.ckks_fingerprint:
                raise CryptoError("the server bundle's public context does not match its manifest")
            if cfg.defense.defenses and public.preset is not Preset.AGGREGATION:
                raise CryptoError("encrypted filtering needs keys of the 'aggregation' preset")
            self.preset = public.preset
            self.public = public
        else:
            if self._restored_blob is not None:
                raise CryptoError("--resume under CKKS needs provisioned keys (key-dir): in-band "
                                  "keys live only as long as one run")
            self.public = self._in_band_setup(grid, list(nodes), cfg)
        if self._restored_blob is not None:
            self.global_enc = self._decode_global(self._restored_blob)
            self._global_blob = self._restored_blob
            self._restored_blob = None
            self._history = [(self._restored_round, self.global_enc, len(self._prov))]
            self._floor = 1

    def _in_band_setup(self, grid: Any, nodes: list[int], cfg: FedConfig) -> PublicContext:
        generator = nodes[0]
        contents = {
            n: RecordDict({P.KEYS: ConfigRecord({
                P.KEY_ROLE: P.ROLE_GENERATOR if n == generator else P.ROLE_MEMBER,
                P.KEY_PRESET: self.preset.id})})
            for n in nodes
        }
        replies, lost = exchange(grid, contents, P.MSG_KEYS_SETUP, 0, cfg.run.round_timeout)
        if generator not in replies:
            raise CryptoError(f"in-band key setup failed: the generator node {generator} "
                              f"did not answer ({lost.get(generator, 'no reply')})")
        gen = replies[generator].content.config_records.get(P.KEYS)
        if gen is None or not isinstance(gen.get(P.KEY_PUBLIC_CONTEXT), bytes):
            raise CryptoError("in-band key setup failed: no public context from the generator")
        public = PublicContext.from_bytes(gen[P.KEY_PUBLIC_CONTEXT])  # type: ignore[arg-type]
        if public.preset is not self.preset:
            raise CryptoError("in-band key setup failed: the generator used another preset")
        recipients, publics = [], []
        for n in nodes:
            if n == generator or n not in replies:
                continue
            rec = replies[n].content.config_records.get(P.KEYS)
            pub = rec.get(P.KEY_WRAP_PUBLIC) if rec is not None else None
            if isinstance(pub, bytes) and len(pub) == 32:
                recipients.append(str(n))
                publics.append(pub)
            else:
                self._audit.append({"round": 0, "node": n, "event": "key-setup-failed",
                                    "reason": "no valid wrap key"})
        for n, why in lost.items():
            self._audit.append({"round": 0, "node": n, "event": "key-setup-failed", "reason": why})
        if recipients:
            wrap_req = {generator: RecordDict({P.KEYS: ConfigRecord(
                {P.KEY_RECIPIENTS: recipients, P.KEY_WRAP_PUBLICS: publics})})}
            wrapped, lost2 = exchange(grid, wrap_req, P.MSG_KEYS_WRAP, 0, cfg.run.round_timeout)
            if generator not in wrapped:
                raise CryptoError(f"in-band key setup failed: wrapping ({lost2.get(generator)})")
            blobs = wrapped[generator].content.config_records.get(P.KEYS) or ConfigRecord({})
            for r in recipients:
                blob = blobs.get(P.KEY_WRAPPED_PREFIX + r)
                if isinstance(blob, bytes) and len(blob) < 16 * 2**20:
                    self._wrapped[int(r)] = blob
        log.info("in-band CKKS keys: generator node %s, %d wrapped copies, fingerprint %s",
                 generator, len(self._wrapped), public.fingerprint)
        return public

    # -- the global model -------------------------------------------------------------------
    def global_records(self, node: int, round_: int) -> RecordDict:
        rd = RecordDict()
        meta = self._meta()
        if node in self._wrapped:  # delivered once, with the first message after setup
            meta.update({P.KEY_WRAPPED_SECRET: self._wrapped.pop(node), P.KEY_RECIPIENT: str(node)})
        if self.global_enc is None:
            rd[P.GLOBAL_PLAIN] = vector_record(self.initial)  # public seeded initialisation
        else:
            rd[P.GLOBAL_CIPHER] = bytes_record({P.BLOB_GLOBAL: self._blob()})
            rd[P.PROVENANCE] = provenance_record([self._prov])
        if round_ >= 1:  # every message of the round; a trainer records it from its train message
            meta[P.SCREEN_COMMIT] = commitment(round_, self._nonce_of(round_))
        rd[P.KEYS] = ConfigRecord(meta)
        return rd

    def _meta(self) -> dict[str, Any]:
        fingerprint = self.public.fingerprint if self.public is not None else ""
        return {P.KEY_DENOMINATOR: WEIGHT_DENOMINATOR, P.KEY_PRESET: self.preset.id,
                "fingerprint": fingerprint}

    def _nonce_of(self, round_: int) -> bytes:
        """The round's screening nonce, drawn once, before any of its uploads exists."""
        if self._round_nonce is None or self._round_nonce[0] != round_:
            self._round_nonce = (round_, self._nonce(NONCE_BYTES))
            self._tags.clear()
        return self._round_nonce[1]

    def candidate_records(self, groups: Sequence[tuple[Sequence[EncryptedVector], Sequence[int]]],
                          round_: int) -> RecordDict:
        """Candidate globals for attribution: the current global plus each group's sum.

        Each group's weights must sum to ``K``; its uploads are credited to ``round_``.
        """
        public = self._public()
        blobs: dict[str, bytes] = {}
        provs: list[Provenance] = []
        for i, (payloads, weights) in enumerate(groups):
            total = weighted_sum(public, list(payloads), [int(w) for w in weights])
            cand = total if self.global_enc is None else add(public, self.global_enc, total)
            blobs[f"c{i:03d}"] = wire.encode(cand)
            provs.append([*self._prov, *((upload_seed(p), int(w), round_)
                                         for p, w in zip(payloads, weights, strict=True))])
        return RecordDict({P.CANDIDATES: bytes_record(blobs),
                           P.PROVENANCE: provenance_record(provs, candidates=True),
                           P.KEYS: ConfigRecord(self._meta())})

    def rollback(self) -> int | None:
        """Drop the newest aggregate and return its round; None when nothing can be undone."""
        if len(self._history) <= self._floor:
            return None
        if len(self._history) >= 2 and self._history[-2][1] is None:
            return None  # the ciphertext before it is no longer kept
        round_, _s, _n = self._history.pop()
        if self._history:
            _r, prev, n = self._history[-1]
            self.global_enc, self._prov = prev, self._prov[:n]
        else:
            self.global_enc, self._prov = None, []
        self._global_blob = None
        return round_

    def _blob(self) -> bytes:
        if self._global_blob is None:
            assert self.global_enc is not None
            self._global_blob = wire.encode(self.global_enc)
        return self._global_blob

    def bytes_down(self, node: int) -> int:
        return len(self._blob()) if self.global_enc is not None else int(self.initial.nbytes)

    # -- updates ----------------------------------------------------------------------------
    def _public(self) -> PublicContext:
        if self.public is None:
            raise CryptoError("no public context: key setup has not run")
        return self.public

    def parse_update(self, node: int, content: RecordDict) -> EncryptedVector:
        if P.UPDATE_CIPHER not in content.array_records:
            raise RejectedUpdate("malformed", "reply has no encrypted update")
        max_bytes = wire.encoded_size(self.preset, self.dim, seeded=False)
        blob = record_bytes(content.array_records[P.UPDATE_CIPHER], P.BLOB_UPDATE, max_bytes)
        try:
            enc = wire.decode(blob, self._public(), expected_length=self.dim, max_bytes=max_bytes)
        except InvalidCiphertext as exc:
            raise RejectedUpdate(f"ciphertext:{exc.reason}", "") from None
        except KeyMismatch:
            raise RejectedUpdate("ciphertext:key-mismatch", "") from None
        if enc.multiplier != 1:  # an update is one fresh encryption, not a pre-weighted sum
            raise RejectedUpdate("ciphertext:weighted", "an update must carry weight 1")
        if not enc.seeded:  # trainers' uploads are seeded: the seed is what binds an aggregate
            raise RejectedUpdate("ciphertext:unseeded", "an update must be a seeded encryption")
        seed = upload_seed(enc)
        if seed in self._seen_seeds:  # a replayed or copied upload
            raise RejectedUpdate("ciphertext:replayed-seed", "this upload's seed was seen before")
        if self.validates_uploads:  # the key holders project only a seed its tag binds
            rec = content.array_records[P.UPDATE_CIPHER]
            if P.BLOB_TAG not in rec:
                raise RejectedUpdate("ciphertext:untagged", "an upload must carry its screening tag")
            tag = record_bytes(rec, P.BLOB_TAG, TAG_BYTES)
            if len(tag) != TAG_BYTES:
                raise RejectedUpdate("ciphertext:untagged", f"a tag is {TAG_BYTES} bytes")
            self._tags[seed] = tag
        self._seen_seeds.add(seed)
        return enc

    def statistics(self, grid: Any, payloads: Mapping[int, EncryptedVector], round_: int) -> UpdateStats:
        """Projection screening (:mod:`crypto.stats`): sound checks and sketch statistics.

        Uploads are seeded, each seed new (:meth:`parse_update`); then, with a nonce drawn
        now (after every upload of the round is in), the server projects the ``c0`` parts
        itself and asks a quorum of key holders for the seed parts. Clients whose
        projections leave the certified band are rejected (``statistic:*``); the filters see
        only the others, through norms and distances estimated from the projections.
        """
        ids = sorted(payloads)
        rejected: dict[int | str, str] = {}
        # parse_update already refused unseeded uploads and any seed seen before (this round
        # or earlier); this only guards callers that hand in payloads another way
        seeds = [payloads[i]._seed for i in ids]
        for i, seed in zip(ids, seeds, strict=True):
            if seed is None:
                rejected[i] = "ciphertext:unseeded"
            elif seeds.count(seed) > 1:
                rejected[i] = "ciphertext:replayed-seed"
        screened = [i for i in ids if i not in rejected]
        n = len(ids)
        norms = np.full(n, np.nan)
        dists = np.full((n, n), np.nan)
        np.fill_diagonal(dists, 0.0)
        if screened:
            vectors = [payloads[i] for i in screened]
            params = self.screen_params
            challenge = new_challenge(round_, vectors, params.repetitions, nonce=self._nonce_of(round_))
            tags = [self._tags.get(sd, b"") for sd in challenge.seeds]
            # The server's c0 projections (about half the screen's CPU time) run in a thread
            # while the key holders compute the seed parts on their own machines: neither
            # needs the other's result until combine(). numpy's matmuls release the GIL.
            with ThreadPoolExecutor(max_workers=1, thread_name_prefix="fedguard-screen") as pool:
                own = pool.submit(server_projections, self._public(), vectors, challenge)
                agreed = self._holders_answer(grid, ids, challenge, tags, round_)
                server_part = own.result()
            if agreed is None:
                rejected.update({i: "statistic:no-key-holder-quorum" for i in screened})
            else:
                unbound, holder_part = agreed
                for a_ in unbound:  # the holders refused its tag: never projected
                    rejected[screened[a_]] = "statistic:unbound-seed"
                    self._audit.append({"round": round_, "node": screened[a_],
                                        "event": "screen-rejected", "reason": "statistic:unbound-seed"})
                bound = [a_ for a_ in range(len(screened)) if a_ not in unbound]  # a short tuple
                if bound:
                    proj = combine(self.preset, [server_part[a_] for a_ in bound], holder_part)
                    reasons = check_projections(proj, params)
                    sketch = sketch_statistics(proj, params)
                    pos = {c: k for k, c in enumerate(ids)}
                    for x, a_ in enumerate(bound):
                        i = screened[a_]
                        if reasons[x] is not None:
                            rejected[i] = str(reasons[x])
                            self._audit.append({"round": round_, "node": i, "event": "screen-rejected",
                                                "reason": reasons[x]})
                        norms[pos[i]] = sketch.sq_norms[x]
                        for y, b_ in enumerate(bound):
                            dists[pos[i], pos[screened[b_]]] = sketch.sq_dists[x, y]
        return UpdateStats(client_ids=tuple(ids), sq_norms=norms, pair_sq_dists=dists,
                           rejected=rejected, sketch_repetitions=self.screen_params.repetitions)

    def _holders_answer(self, grid: Any, ids: list[int], challenge: Challenge, tags: list[bytes],
                        round_: int) -> tuple[tuple[int, ...], list[list[int]]] | None:
        """The key holders' agreed answer: (indices of unbound seeds, rows of the bound ones).

        An answer counts once ``needed = min(len(ids), f + 1)`` holders gave it identically
        (and more than gave any other): with at most ``f`` lying trainers one of them is
        honest, so colluders cannot vouch for an upload the honest holders would reject.
        First ``max(screen-quorum, f + 1)`` holders are asked (those that never disagreed
        first); when their answers decide nothing, every other trainer of the round as well.
        """
        f = resolve_max_malicious(self.cfg.defense.max_malicious, len(ids))
        needed = min(len(ids), f + 1)
        ask = min(len(ids), max(self.cfg.defense.screen_quorum, needed))
        order = self._rng.sample(ids, len(ids))
        # stable: responsive and trusted first, random within; a silent holder is not called
        # a liar, but it no longer makes every round wait for it and then ask everyone
        order.sort(key=lambda n: (n in self._distrusted, n in self._silent))
        holders, spare = sorted(order[:ask]), order[ask:]
        answers = self._ask(grid, holders, challenge, tags, round_)
        agreed, liars = reconcile(answers, needed)
        if agreed is None and spare:
            answers.update(self._ask(grid, sorted(spare), challenge, tags, round_))
            agreed, liars = reconcile(answers, needed)
        if agreed is None:
            log.warning("round %d: no screening answer was given by %d key holders (and by more "
                        "than any other)", round_, needed)
            return None
        for liar in sorted(liars):
            if answers[liar][0] == "silent":  # reported as key-holder-silent already
                continue
            self._distrusted.add(int(liar))
            self._audit.append({"round": round_, "node": int(liar), "event": "key-holder-disagrees",
                                "reason": "screening answers differ from the agreed answer"})
            log.warning("round %d: key holder %s disagrees with the agreed answer", round_, liar)
        unbound, values = agreed
        r = challenge.repetitions
        return unbound, [list(values[k * r:(k + 1) * r]) for k in range(len(values) // r)]

    def _ask(self, grid: Any, holders: list[int], challenge: Challenge, tags: list[bytes],
             round_: int) -> dict[str, Any]:
        """Each holder's answer as a hashable ``(unbound indices, values)``; a malformed or
        missing answer becomes a value of its own, which never matches another holder's."""
        request = ConfigRecord({
            P.SCREEN_ROUND: challenge.round, P.SCREEN_REPETITIONS: challenge.repetitions,
            P.SCREEN_LENGTH: challenge.length, P.SCREEN_NONCE: challenge.nonce,
            P.SCREEN_SEEDS: list(challenge.seeds), P.SCREEN_TAGS: list(tags)})
        contents = {h: RecordDict({P.SCREEN: request, P.CFG: ConfigRecord({P.CFG_ROUND: round_})})
                    for h in holders}
        replies, lost = exchange(grid, contents, P.MSG_SCREEN, round_, self.cfg.run.round_timeout)
        n, r = len(challenge.seeds), challenge.repetitions
        answers: dict[str, Any] = {}
        for h, reply in replies.items():
            self._silent.discard(int(h))
            rec = reply.content.metric_records.get(P.SCREEN)
            vals = rec.get(P.SCREEN_VALUES) if rec is not None else None
            gaps = rec.get(P.SCREEN_UNBOUND, []) if rec is not None else None
            listed = vals if isinstance(vals, list) else []
            ints = [v for v in listed if isinstance(v, int) and not isinstance(v, bool)]
            holes = [v for v in gaps if isinstance(v, int) and not isinstance(v, bool)] \
                if isinstance(gaps, list) else []
            well_formed = (isinstance(gaps, list) and len(holes) == len(gaps) == len(set(holes))
                           and all(0 <= v < n for v in holes) and len(ints) == len(listed)
                           and len(ints) == (n - len(holes)) * r)
            answers[str(h)] = (tuple(sorted(holes)), tuple(ints)) if well_formed else ("malformed", h)
        for h, why in lost.items():
            answers[str(h)] = ("silent", h)  # asked, did not answer: never part of an agreement
            self._silent.add(int(h))
            self._audit.append({"round": round_, "node": h, "event": "key-holder-silent", "reason": why})
        return answers

    def aggregate(self, payloads: Sequence[EncryptedVector], weights: Sequence[int],
                  round_: int = 0) -> None:
        public = self._public()
        total = weighted_sum(public, list(payloads), list(weights))
        self.global_enc = total if self.global_enc is None else add(public, self.global_enc, total)
        self._global_blob = None
        self._prov.extend((upload_seed(p), int(w), round_)
                          for p, w in zip(payloads, weights, strict=True))
        self._history.append((round_, self.global_enc, len(self._prov)))
        for i in range(max(0, len(self._history) - _KEPT_GLOBALS)):
            r, _s, n = self._history[i]
            self._history[i] = (r, None, n)

    def drain_audit(self) -> list[dict[str, Any]]:
        out, self._audit = self._audit, []
        return out

    # -- checkpoints (ciphertexts only) -----------------------------------------------------
    def checkpoint(self) -> dict[str, Any]:
        return {"scheme": self.name, "preset": self.preset.id,
                "fingerprint": self._public().fingerprint, P.GLOBAL_CIPHER: self._blob(),
                P.GLOBAL_ROUND: self.global_round,
                "prov-seeds": b"".join(s for s, _w, _r in self._prov),
                "prov-weights": np.array([w for _s, w, _r in self._prov], dtype=np.int64),
                "prov-rounds": np.array([r for _s, _w, r in self._prov], dtype=np.int64)}

    def restore(self, state: dict[str, Any]) -> None:
        if str(state.get("scheme")) != self.name:
            raise ValueError("checkpoint was not written by an encrypted run")
        blob = state[P.GLOBAL_CIPHER]
        self._restored_blob = blob.tobytes() if hasattr(blob, "tobytes") else bytes(blob)
        raw = state.get("prov-seeds")
        seeds = (raw.tobytes() if hasattr(raw, "tobytes") else bytes(raw)) if raw is not None else b""
        weights = [int(w) for w in np.asarray(state.get("prov-weights", []), dtype=np.int64)]
        rounds = [int(r) for r in np.asarray(state.get("prov-rounds", []), dtype=np.int64)]
        if len(seeds) != SEED_BYTES * len(weights) or len(weights) != len(rounds):
            raise ValueError("checkpoint provenance is inconsistent")
        self._prov = [(seeds[i * SEED_BYTES:(i + 1) * SEED_BYTES], weights[i], rounds[i])
                      for i in range(len(weights))]
        self._seen_seeds = {s for s, _w, _r in self._prov}
        self._restored_round = int(np.asarray(state.get(P.GLOBAL_ROUND, state.get("round", 0))))

    def _decode_global(self, blob: bytes) -> EncryptedVector:
        public = self._public()
        limit = max(len(blob), 1)
        try:
            enc = wire.decode(blob, public, expected_length=self.dim, max_bytes=limit)
        except (InvalidCiphertext, KeyMismatch) as exc:
            raise ProtocolError(f"checkpoint does not fit the current key: {exc}") from None
        return enc
