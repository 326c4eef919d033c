"""One self-contained HTML page per run folder, and one page comparing several runs.

``report.html`` is written next to ``metrics.jsonl`` when a run finishes and again by
``fedguard report RUN_DIR``. It reads only the run folder (``config.json``, ``metrics.jsonl``,
``summary.json``; each optional) and embeds every figure as a base64 PNG, so the file can be
mailed or opened from disk with no network and no other file.

What the page shows, per round: accuracy and loss; ε spent by every client against the budget
(``dp.epsilon`` of the run's config); accepted / rejected / not-counted clients and every
reason; bytes up and down; the crypto time (client encryption and decryption, encrypted
screening, aggregation); rounds rolled back (a round row with ``rolled_back`` true, or
``rolled_back_rounds`` in ``summary.json``; both are optional).

Everything printed comes from files a peer influenced (reasons quote client replies), so all
text is HTML-escaped; nothing from the files is ever emitted as markup.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from server.report import atomic_write, integer_rounds, read_rows

__all__ = ["REPORT_FILE", "RunData", "load_run", "write_comparison", "write_report"]

REPORT_FILE = "report.html"
"""The page's file name inside a run folder."""

_CRYPTO_TIMINGS = (  # (timings key, legend label): the crypto share of a round, in seconds
    ("client-encrypt-seconds-max", "client encryption (slowest client)"),
    ("client-decrypt-seconds-max", "client decryption (slowest client)"),
    ("screen", "screening (server + key-holder quorum)"),
    ("aggregate", "aggregation"),
)


@dataclass
class RunData:
    """What one run folder holds, parsed; every field may be empty for a partial folder."""

    folder: Path
    config: dict[str, Any] = field(default_factory=dict)  # the typed tree of config.json
    rows: list[dict[str, Any]] = field(default_factory=list)  # metrics.jsonl, one per round
    summary: dict[str, Any] = field(default_factory=dict)

    @property
    def rounds(self) -> list[int]:
        return [int(r["round"]) for r in self.rows]

    @property
    def epsilon_budget(self) -> float | None:
        """The per-client ε budget of the run (None without ``--dp-epsilon``)."""
        eps = (self.config.get("dp") or {}).get("epsilon")
        return float(eps) if isinstance(eps, (int, float)) and eps > 0 else None

    @property
    def rolled_back(self) -> list[int]:
        """Rounds whose aggregate was rolled back, from either place a run may record them."""
        rounds = {int(r["round"]) for r in self.rows if r.get("rolled_back")}
        listed = self.summary.get("rolled_back_rounds") or []
        rounds.update(int(x) for x in listed if isinstance(x, (int, float)))
        return sorted(rounds)

    def label(self, row: dict[str, Any], node: str) -> str:
        """A node id as the client label the round recorded (``client-3``), else the id."""
        return str((row.get("clients") or {}).get(node, f"node {node}"))


def load_run(folder: Path) -> RunData:
    """Read a run folder; raises FileNotFoundError if it has no ``metrics.jsonl``."""
    folder = Path(folder)
    metrics = folder / "metrics.jsonl"
    if not metrics.is_file():
        raise FileNotFoundError(f"{folder} is not a run folder: it has no metrics.jsonl")
    data = RunData(folder, rows=read_rows(metrics))
    cfg = _read_json(folder / "config.json")
    data.config = cfg.get("config", {}) if isinstance(cfg.get("config"), dict) else {}
    data.summary = _read_json(folder / "summary.json")
    return data


def _read_json(path: Path) -> dict[str, Any]:
    try:
        obj = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return obj if isinstance(obj, dict) else {}


# -- figures ------------------------------------------------------------------------------

def _plt() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _png(fig: Any) -> str:
    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png", dpi=100)
    _plt().close(fig)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def _num(v: Any) -> float:
    return float(v) if isinstance(v, (int, float)) and math.isfinite(v) else math.nan


def accuracy_figure(run: RunData) -> str:
    """Accuracy (left axis) and loss (right axis) per round; rolled-back rounds shaded."""
    plt = _plt()
    rounds = run.rounds
    fig, ax1 = plt.subplots(figsize=(7, 3.6))
    ax1.plot(rounds, [_num(r.get("accuracy")) for r in run.rows], "o-", color="tab:blue",
             label="accuracy")
    ax1.set_ylabel("test accuracy", color="tab:blue")
    ax2 = ax1.twinx()
    ax2.plot(rounds, [_num(r.get("loss")) for r in run.rows], "s--", color="tab:red", label="loss")
    ax2.set_ylabel("test loss", color="tab:red")
    for k in run.rolled_back:
        ax1.axvspan(k - 0.5, k + 0.5, color="tab:orange", alpha=0.15, lw=0)
    integer_rounds(ax1, rounds)
    ax1.set_title("Global model after each round" + ("  (shaded: rolled back)" if run.rolled_back else ""))
    return _png(fig)


def epsilon_figure(run: RunData) -> str | None:
    """ε spent per client per round with the budget line; None when no client reported ε."""
    eps = [r.get("epsilon_by_client") or {} for r in run.rows]
    clients = sorted({c for e in eps for c in e}, key=_natural)
    if not clients:
        return None
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 3.6))
    for c in clients:
        ax.plot(run.rounds, [_num(e.get(c)) for e in eps], marker=".", label=c)
    budget = run.epsilon_budget
    if budget is not None:
        ax.axhline(budget, color="black", ls=":", lw=1.5, label=f"budget ε = {budget:g}")
    integer_rounds(ax, run.rounds)
    ax.set_ylabel("ε spent (cumulative)")
    ax.set_title("Privacy spent per client")
    ax.legend(fontsize=7, ncol=3 if len(clients) > 8 else 2, loc="lower right")
    return _png(fig)


def clients_figure(run: RunData) -> str:
    """Accepted, rejected (filtered or invalid) and not-counted clients per round, stacked."""
    plt = _plt()
    rounds = run.rounds
    acc = [len(r.get("accepted") or []) for r in run.rows]
    rej = [len(r.get("rejected") or {}) for r in run.rows]
    ref = [len(r.get("refused") or {}) for r in run.rows]
    fig, ax = plt.subplots(figsize=(7, 3.2))
    ax.bar(rounds, acc, color="tab:green", label="accepted")
    ax.bar(rounds, rej, bottom=acc, color="tab:red", label="rejected")
    ax.bar(rounds, ref, bottom=[a + b for a, b in zip(acc, rej, strict=True)], color="tab:gray",
           label="not counted (lost, error, budget)")
    integer_rounds(ax, rounds)
    from matplotlib.ticker import MaxNLocator

    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel("clients")
    ax.set_title("Who counted in each round")
    ax.set_ylim(0, max([a + b + c for a, b, c in zip(acc, rej, ref, strict=True)], default=1) * 1.35)
    ax.legend(fontsize=8, loc="upper left", ncol=3)
    return _png(fig)


def cost_figure(run: RunData) -> str:
    """Bytes up and down per round (bars, MB) and the crypto time per round (lines, s)."""
    plt = _plt()
    rounds = run.rounds
    up = [sum((r.get("bytes_up") or {}).values()) / 1e6 for r in run.rows]
    down = [sum((r.get("bytes_down") or {}).values()) / 1e6 for r in run.rows]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.4))
    w = 0.4
    ax1.bar([k - w / 2 for k in rounds], up, width=w, label="up (accepted updates)")
    ax1.bar([k + w / 2 for k in rounds], down, width=w, label="down (global model)")
    integer_rounds(ax1, rounds)
    ax1.set_ylabel("MB per round (all clients)")
    ax1.set_title("Traffic")
    ax1.legend(fontsize=8)
    drew = False
    for key, label in _CRYPTO_TIMINGS:
        vals = [_num((r.get("timings") or {}).get(key)) for r in run.rows]
        if any(not math.isnan(v) for v in vals):
            ax2.plot(rounds, vals, marker=".", label=label)
            drew = True
    integer_rounds(ax2, rounds)
    ax2.set_ylabel("seconds")
    ax2.set_title("Crypto and screening time")
    if drew:
        ax2.legend(fontsize=7, loc="best")
    else:
        ax2.text(0.5, 0.5, "no encryption or screening in this run", ha="center",
                 transform=ax2.transAxes)
    return _png(fig)


def comparison_figure(runs: Sequence[tuple[str, RunData]]) -> str:
    """The accuracy of several runs in one plot (the same rounds axis)."""
    plt = _plt()
    many = len(runs) > 6
    fig, ax = plt.subplots(figsize=(11 if many else 7, 4.2 if many else 3.8))
    every: list[int] = []
    for label, run in runs:
        ax.plot(run.rounds, [_num(r.get("accuracy")) for r in run.rows], "o-", label=label)
        every += run.rounds
    integer_rounds(ax, sorted(set(every)))
    ax.set_ylabel("test accuracy")
    ax.set_title("Compared runs")
    if runs and many:
        ax.legend(fontsize=6, loc="upper left", bbox_to_anchor=(1.01, 1.0), ncol=1 + len(runs) // 20)
    elif runs:
        ax.legend(fontsize=8)
    return _png(fig)


def _natural(name: str) -> tuple[str, int]:
    head, _, tail = name.rpartition("-")
    return (head, int(tail)) if tail.isdigit() else (name, -1)


# -- page ---------------------------------------------------------------------------------

_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2em auto;max-width:70em;
color:#222;padding:0 1em}h1{font-size:1.5em}h2{font-size:1.15em;margin-top:1.8em;border-bottom:1px solid #ddd}
table{border-collapse:collapse;font-size:.88em;margin:.5em 0}td,th{border:1px solid #ccc;padding:.25em .5em;
text-align:left;vertical-align:top}th{background:#f4f4f4}img{max-width:100%;display:block;margin:.5em 0}
.bad{color:#b00}.muted{color:#777}.kv td:first-child{font-weight:600}pre{overflow-x:auto;font-size:.8em}
"""


def _e(v: Any) -> str:
    return html.escape(str(v), quote=True)


def _pct(v: Any) -> str:
    return f"{100 * v:.1f} %" if isinstance(v, (int, float)) and math.isfinite(v) else "n/a"


def _img(b64: str | None, alt: str) -> str:
    if b64 is None:
        return f'<p class="muted">{_e(alt)}: nothing recorded.</p>'
    return f'<img alt="{_e(alt)}" src="data:image/png;base64,{b64}">'


def _page(title: str, body: str) -> str:
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>{_e(title)}</title><style>{_CSS}</style></head><body>\n"
            f"<h1>{_e(title)}</h1>\n{body}\n</body></html>\n")


def _summary_table(run: RunData) -> str:
    c, s = run.config, run.summary
    dp = c.get("dp") or {}
    items = [
        ("run folder", str(run.folder)),
        ("clients / rounds", f"{(c.get('run') or {}).get('clients', '?')} clients, "
                             f"{len(run.rows)} round(s) recorded"),
        ("data", f"{(c.get('data') or {}).get('task', '?')}, partition "
                 f"{(c.get('data') or {}).get('partition', '?')}"),
        ("differential privacy", f"budget ε = {run.epsilon_budget:g} per client" if run.epsilon_budget
         else (f"noise multiplier {dp.get('noise_multiplier')}" if dp.get("noise_multiplier") else "off")),
        ("secure aggregation", (c.get("secure") or {}).get("mode", s.get("secure_aggregation", "?"))),
        ("defence", ",".join((c.get("defense") or {}).get("defenses") or []) or "none"),
        ("attack", (f"{(c.get('attack') or {}).get('attack')} "
                    f"({100 * float((c.get('attack') or {}).get('malicious') or 0):.0f} % of clients)")
         if (c.get("attack") or {}).get("attack") else "none"),
        ("final accuracy", _pct(s.get("final_accuracy"))),
        ("largest ε spent", f"{s['max_epsilon']:.3f}" if isinstance(s.get("max_epsilon"), (int, float))
         else "n/a"),
        ("upload bytes per parameter", f"{s['upload_bytes_per_param']:.2f}"
         if isinstance(s.get("upload_bytes_per_param"), (int, float)) else "n/a"),
        ("rolled back rounds", ", ".join(map(str, run.rolled_back)) or "none"),
    ]
    if s.get("stopped_early"):
        items.append(("stopped early", s.get("stop_reason", "")))
    return ('<table class="kv">' + "".join(f"<tr><td>{_e(k)}</td><td>{_e(v)}</td></tr>"
                                            for k, v in items) + "</table>")


def _rounds_table(run: RunData) -> str:
    head = ("<tr><th>round</th><th>accuracy</th><th>loss</th><th>max ε</th><th>accepted</th>"
            "<th>rejected (reason)</th><th>not counted (reason)</th><th>seconds</th></tr>")
    body = []
    rolled = set(run.rolled_back)
    for r in run.rows:
        k = int(r["round"])
        accepted = ", ".join(sorted((run.label(r, str(n)) for n in r.get("accepted") or []),
                                    key=_natural))
        rejected = "<br>".join(f"{_e(run.label(r, n))}: {_e(why)}"
                               for n, why in (r.get("rejected") or {}).items())
        refused = "<br>".join(f"{_e(run.label(r, n))}: {_e(why)}"
                              for n, why in (r.get("refused") or {}).items())
        eps = r.get("max_epsilon")
        note = " <span class=\"bad\">rolled back</span>" if k in rolled else ""
        excluded = (r.get("recovery") or {}).get("excluded") or []
        if k in rolled and excluded:  # the round was redone without the suspected group
            note += (' <span class="muted">(redone without '
                     + _e(", ".join(sorted((run.label(r, str(n)) for n in excluded), key=_natural)))
                     + ")</span>")
        if r.get("note"):
            note += f' <span class="muted">{_e(r["note"])}</span>'
        body.append(
            f"<tr><td>{k}{note}</td><td>{_pct(r.get('accuracy'))}</td>"
            f"<td>{_e(format(r['loss'], '.4f') if isinstance(r.get('loss'), (int, float)) else 'n/a')}</td>"
            f"<td>{_e(format(eps, '.3f') if isinstance(eps, (int, float)) else '')}</td>"
            f"<td>{_e(accepted)}</td><td class=\"bad\">{rejected}</td><td>{refused}</td>"
            f"<td>{_e(format(r['seconds'], '.1f') if isinstance(r.get('seconds'), (int, float)) else '')}"
            "</td></tr>")
    return f"<table>{head}{''.join(body)}</table>"


def render_report(run: RunData) -> str:
    """The HTML text of a run's page."""
    if not run.rows:
        body = _summary_table(run) + '<p class="muted">No round has finished yet.</p>'
        return _page(f"fedguard run {run.folder.name}", body)
    parts = [
        _summary_table(run),
        "<h2>Accuracy and loss</h2>", _img(accuracy_figure(run), "accuracy and loss per round"),
        "<h2>Privacy spent</h2>", _img(epsilon_figure(run), "ε per client per round"),
        "<h2>Accepted and rejected clients</h2>", _img(clients_figure(run), "clients per round"),
        _rounds_table(run),
        "<h2>Bytes and crypto time</h2>", _img(cost_figure(run), "bytes and crypto time per round"),
    ]
    return _page(f"fedguard run {run.folder.name}", "\n".join(parts))


def write_report(folder: Path) -> Path:
    """Write ``folder/report.html`` from the run folder's files and return its path."""
    run = load_run(folder)
    path = run.folder / REPORT_FILE
    atomic_write(path, render_report(run).encode("utf-8"))
    return path


def write_comparison(path: Path, runs: Sequence[tuple[str, Path]], *, title: str,
                     table: str = "") -> Path:
    """Write one page comparing ``runs`` (label, run folder): their accuracy in one plot.

    ``table`` is an optional preformatted plain-text table shown under the plot (escaped).
    Each run also links to its own ``report.html`` (relative when it lies below ``path``).
    """
    loaded = [(label, load_run(folder)) for label, folder in runs]
    rows = []
    for label, run in loaded:
        page = run.folder / REPORT_FILE
        try:
            href = page.relative_to(path.parent).as_posix()
        except ValueError:
            href = page.as_uri()
        rows.append(f"<tr><td>{_e(label)}</td><td>{_pct(run.summary.get('final_accuracy'))}</td>"
                    f"<td><a href=\"{_e(href)}\">{_e(run.folder)}</a></td></tr>")
    body = [_img(comparison_figure(loaded), "accuracy of the compared runs"),
            "<table><tr><th>run</th><th>final accuracy</th><th>run report</th></tr>"
            + "".join(rows) + "</table>"]
    if table:
        body.append(f"<pre>{_e(table)}</pre>")
    atomic_write(path, _page(title, "\n".join(body)).encode("utf-8"))
    return path
