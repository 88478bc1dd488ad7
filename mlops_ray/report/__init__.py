"""The run report: one self-contained HTML file (figures embedded as PNG data URIs).

Sections: headline and champion/challenger decision, test metrics with bootstrap intervals
beside the baselines, ROC and PR curves, calibration, confusion matrix, permutation
importance, partial dependence, the slice table, the data summary (rows in, kept,
quarantined per reason) and the drift reference summary. Figures are drawn with matplotlib
(Agg backend); the page needs no network and no JavaScript.
"""

from __future__ import annotations

import base64
import html
import io
import json
import logging
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

_CSS = """
body{font-family:-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:0;color:#1d2330;background:#f6f7f9}
header{background:#1d2330;color:#fff;padding:18px 32px}header h1{margin:0;font-size:22px}
header p{margin:4px 0 0;color:#b9c0cc;font-size:13px}
main{padding:20px 32px;max-width:1200px}
section{background:#fff;border-radius:8px;box-shadow:0 1px 3px rgba(0,0,0,.08);padding:16px 20px;margin:0 0 18px}
h2{font-size:17px;margin:0 0 10px}
.cards{display:flex;gap:12px;flex-wrap:wrap}.card{background:#fff;border-radius:8px;padding:12px 16px;min-width:150px;
box-shadow:0 1px 3px rgba(0,0,0,.08)}.card b{display:block;font-size:22px}.card span{font-size:12px;color:#5b6474}
table{border-collapse:collapse;font-size:13px;width:100%}th,td{padding:5px 8px;border-bottom:1px solid #e6e8ec;text-align:right}
th:first-child,td:first-child{text-align:left}th{background:#f0f2f5}
.grid{display:grid;grid-template-columns:repeat(auto-fill,minmax(340px,1fr));gap:12px}
.grid img{width:100%;border:1px solid #eceef1;border-radius:6px}
.flag{color:#b3261e;font-weight:600}.ok{color:#1b7f3b;font-weight:600}.muted{color:#6b7280;font-size:12px}
"""


def _png(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    import matplotlib.pyplot as plt

    plt.close(fig)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def _figures(ev: dict[str, Any], explain: dict[str, Any] | None) -> dict[str, str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figs: dict[str, str] = {}
    curves = ev.get("curves", {})
    if "roc" in curves:
        fig, ax = plt.subplots(figsize=(4.2, 3.6))
        ax.plot(curves["roc"]["fpr"], curves["roc"]["tpr"], label=f"model (AUC {ev['model']['roc_auc']:.3f})")
        ax.plot([0, 1], [0, 1], "--", color="grey", label="chance")
        ax.set(xlabel="false positive rate", ylabel="true positive rate", title="ROC curve (test)")
        ax.legend(loc="lower right")
        figs["ROC curve"] = _png(fig)
    if "pr" in curves:
        fig, ax = plt.subplots(figsize=(4.2, 3.6))
        ax.plot(curves["pr"]["recall"], curves["pr"]["precision"], label=f"model (AP {ev['model']['pr_auc']:.3f})")
        ax.set(xlabel="recall", ylabel="precision", title="Precision-recall curve (test)", ylim=(0, 1))
        ax.legend(loc="upper right")
        figs["Precision-recall curve"] = _png(fig)
    if "calibration" in curves:
        fig, ax = plt.subplots(figsize=(4.2, 3.6))
        ax.plot(curves["calibration"]["prob_pred"], curves["calibration"]["prob_true"], "o-", label="model")
        ax.plot([0, 1], [0, 1], "--", color="grey", label="perfect")
        ax.set(xlabel="mean predicted probability", ylabel="observed share delayed", title="Calibration (test)")
        ax.legend(loc="upper left")
        figs["Calibration"] = _png(fig)
    cm = ev.get("confusion")
    if cm:
        import numpy as np

        fig, ax = plt.subplots(figsize=(3.8, 3.4))
        mat = np.array([[cm["tn"], cm["fp"]], [cm["fn"], cm["tp"]]])
        ax.imshow(mat, cmap="Blues")
        for (i, j), v in np.ndenumerate(mat):
            ax.text(j, i, f"{v:,}", ha="center", va="center", color="black")
        ax.set(xticks=[0, 1], yticks=[0, 1], xticklabels=["on time", "delayed"], yticklabels=["on time", "delayed"],
               xlabel="predicted", ylabel="actual", title=f"Confusion matrix (threshold {ev['threshold']:.3f})")
        figs["Confusion matrix"] = _png(fig)
    if explain:
        imp = explain["permutation_importance"][:15][::-1]
        fig, ax = plt.subplots(figsize=(4.6, 4.0))
        ax.barh([r["feature"] for r in imp], [r["mean"] for r in imp], xerr=[r["std"] for r in imp], color="#4c72b0")
        ax.set(xlabel=f"mean drop in {explain['scoring']}", title="Permutation importance (test sample)")
        figs["Permutation importance"] = _png(fig)
        for name, pd_ in explain["partial_dependence"].items():
            fig, ax = plt.subplots(figsize=(4.2, 3.2))
            if pd_["kind"] == "categorical":
                ax.bar(range(len(pd_["grid"])), pd_["average"], color="#55a868")
                ax.set_xticks(range(len(pd_["grid"])), pd_["grid"], rotation=90, fontsize=7)
            else:
                ax.plot(pd_["grid"], pd_["average"], "o-", color="#55a868")
            ax.set(xlabel=name, ylabel="mean P(delay)", title=f"Partial dependence: {name}")
            figs[f"Partial dependence: {name}"] = _png(fig)
    return figs


def _fmt(v: Any, digits: int = 4) -> str:
    if v is None:
        return "undefined"
    if isinstance(v, float):
        return f"{v:.{digits}f}"
    return html.escape(str(v))


def render_report(record: dict[str, Any]) -> str:
    """The report HTML for a run record (run.json content) whose evaluate stage succeeded."""
    from jinja2 import Environment

    st = record["stages"]
    ev = st["evaluate"]["outputs"]
    explain = None
    if st.get("explain", {}).get("status") == "succeeded":
        explain = json.loads(Path(st["explain"]["outputs"]["path"]).read_text())
    pre = st.get("preprocess", {}).get("outputs", {})
    ref_path = Path(pre["path"]) / "reference_stats.json" if pre else None
    reference = json.loads(ref_path.read_text()) if ref_path and ref_path.is_file() else None
    template = Environment(autoescape=True).from_string(_TEMPLATE)
    return template.render(
        css=_CSS, run=record, ev=ev, fmt=_fmt, figures=_figures(ev, explain), explain=explain,
        tune=st.get("tune", {}).get("outputs", {}), reg=st.get("register", {}).get("outputs"),
        val=st.get("validate", {}).get("outputs"), pre=pre, reference=reference,
        metrics=["roc_auc", "pr_auc", "accuracy", "precision", "recall", "f1", "log_loss", "brier"])


def write_report(record: dict[str, Any], path: str | Path) -> Path:
    """Write :func:`render_report` to ``path``; returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(render_report(record), encoding="utf-8")
    logger.info("report: %s", path)
    return path


_TEMPLATE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>mlops_ray run {{ run.run_id }}</title>
<style>{{ css }}</style></head><body>
<header><h1>{{ run.pipeline }} &mdash; run {{ run.run_id }}</h1>
<p>created {{ run.created }} &middot; config {{ run.config_hash[:12] }} &middot;
best trial: {{ tune.family or "?" }} (validation {{ tune.metric or "roc_auc" }} {{ fmt(tune.best_score) }})</p></header>
<main>
<div class="cards">
 <div class="card"><span>test ROC AUC</span><b>{{ fmt(ev.model.roc_auc, 3) }}</b>
  <span>{% if ev.intervals.roc_auc %}95% CI {{ fmt(ev.intervals.roc_auc[0], 3) }}&ndash;{{ fmt(ev.intervals.roc_auc[1], 3) }}{% endif %}</span></div>
 <div class="card"><span>test F1 @ {{ fmt(ev.threshold, 3) }}</span><b>{{ fmt(ev.model.f1, 3) }}</b><span>threshold rule: {{ ev.threshold_rule }}</span></div>
 <div class="card"><span>logistic-regression baseline ROC AUC</span><b>{{ fmt(ev.baselines.logistic_regression.roc_auc, 3) }}</b><span>majority class: {{ fmt(ev.baselines.majority_class.roc_auc, 3) }}</span></div>
 {% if reg %}<div class="card"><span>registered</span><b>v{{ reg.version }} &rarr; {{ reg.alias }}</b><span>{{ reg.name }}</span></div>{% endif %}
</div>
{% if reg %}<section><h2>Champion / challenger decision</h2>
<p class="{{ 'ok' if reg.alias == 'champion' else 'flag' }}">{{ reg.name }} v{{ reg.version }} became <b>{{ reg.alias }}</b>.</p>
<p>{{ reg.reason }}</p></section>{% endif %}
<section><h2>Test metrics ({{ ev.rows.test }} rows, {{ (ev.confidence * 100)|round|int }}% bootstrap intervals)</h2>
<table><tr><th>metric</th><th>model</th><th>interval</th><th>logistic regression</th><th>majority class</th></tr>
{% for m in metrics %}<tr><td>{{ m }}</td><td>{{ fmt(ev.model[m]) }}</td>
<td>{% if ev.intervals[m] %}{{ fmt(ev.intervals[m][0]) }} &ndash; {{ fmt(ev.intervals[m][1]) }}{% else %}&ndash;{% endif %}</td>
<td>{{ fmt(ev.baselines.logistic_regression[m]) }}</td><td>{{ fmt(ev.baselines.majority_class[m]) }}</td></tr>{% endfor %}
</table>{% for k, why in ev.undefined.items() %}<p class="flag">{{ why }}</p>{% endfor %}</section>
{% if ev.families %}<section><h2>Model families: the best trial of each ({{ tune.trials }} trials, {{ tune.trials_stopped_early or 0 }} stopped early by ASHA, {{ tune.trials_failed }} failed)</h2>
<table><tr><th>family</th><th>validation {{ tune.metric or "roc_auc" }}</th><th>test ROC AUC</th><th>test PR AUC</th></tr>
{% for fam, m in ev.families.items() %}<tr><td>{{ fam }}{% if fam == tune.family %} <b>(chosen)</b>{% endif %}</td>
<td>{{ fmt((tune.family_best or {}).get(fam, {}).get("score")) }}</td><td>{{ fmt(m.test_roc_auc) }}</td><td>{{ fmt(m.test_pr_auc) }}</td></tr>{% endfor %}
</table></section>{% endif %}
<section><h2>Figures</h2><div class="grid">
{% for title, src in figures.items() %}<figure><img alt="{{ title }}" src="{{ src }}"><figcaption class="muted">{{ title }}</figcaption></figure>{% endfor %}
</div></section>
{% if explain %}<section><h2>Permutation importance (pre-encoding features, {{ explain.n_rows }} test rows, {{ explain.n_repeats }} repeats)</h2>
<table><tr><th>feature</th><th>mean drop in {{ explain.scoring }}</th><th>std</th></tr>
{% for r in explain.permutation_importance %}<tr><td>{{ r.feature }}</td><td>{{ fmt(r.mean) }}</td><td>{{ fmt(r.std) }}</td></tr>{% endfor %}
</table></section>{% endif %}
<section><h2>Slices ({{ ev.slices|length }})</h2>
<table><tr><th>slice</th><th>rows</th><th>delayed</th><th>metric</th><th>interval</th><th>flag</th></tr>
{% for s in ev.slices %}<tr><td>{{ s.column }} = {{ s.value }}</td><td>{{ s.n }}</td><td>{{ s.positives }}</td><td>{{ fmt(s.metric) }}</td>
<td>{% if s.interval %}{{ fmt(s.interval[0], 3) }} &ndash; {{ fmt(s.interval[1], 3) }}{% else %}&ndash;{% endif %}</td>
<td class="{{ 'flag' if s.flagged else 'muted' }}">{{ 'FLAGGED: ' if s.flagged }}{{ s.note }}</td></tr>{% endfor %}
</table></section>
{% if val %}<section><h2>Data</h2>
<table><tr><th>rows in</th><th>kept</th>{% for r in val.quarantined %}<th>quarantined: {{ r }}</th>{% endfor %}</tr>
<tr><td>{{ val.rows_in }}</td><td>{{ val.rows_valid }}</td>{% for r, n in val.quarantined.items() %}<td>{{ n }}</td>{% endfor %}</tr></table>
{% if pre %}<p class="muted">splits: {% for k, v in pre.rows.items() %}{{ k }} {{ v }} &middot; {% endfor %}{{ pre.width }} features &middot; data fingerprint {{ pre.fingerprint[:16] }}</p>{% endif %}
</section>{% endif %}
{% if reference %}<section><h2>Drift reference (training split, {{ reference.rows }} rows)</h2>
<table><tr><th>numeric feature</th><th>null share</th><th>mean</th><th>min</th><th>median</th><th>max</th></tr>
{% for k, v in reference.numeric.items() %}<tr><td>{{ k }}</td><td>{{ fmt(v.null_share, 3) }}</td><td>{{ fmt(v.mean, 2) }}</td>
<td>{{ fmt(v.min, 2) }}</td><td>{{ fmt(v.median, 2) }}</td><td>{{ fmt(v.max, 2) }}</td></tr>{% endfor %}</table>
<table><tr><th>categorical feature</th><th>null share</th><th>most frequent values (share)</th></tr>
{% for k, v in reference.categorical.items() %}<tr><td>{{ k }}</td><td>{{ fmt(v.null_share, 3) }}</td>
<td>{% for t in v.categories[:6] %}{{ t.value }} ({{ fmt(t.share, 3) }}) {% endfor %}</td></tr>{% endfor %}</table>
</section>{% endif %}
</main></body></html>
"""
