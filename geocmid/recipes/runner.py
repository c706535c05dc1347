"""Run a validated recipe: one run folder, steps in order, complete steps skipped on a rerun.

The run folder holds ``recipe.yaml`` (the resolved recipe), ``logs/run.log`` (everything the
steps print), ``state.json`` (per step: settings fingerprint, status, seconds), one folder per
step and ``report.md``. A step whose outputs exist is skipped; one whose settings changed since it
ran is refused (rerunning it silently would mix two runs), unless it is named in ``redo``.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import shutil
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, TextIO

import yaml

from geocmid.errors import ConfigError, GeocmidError
from geocmid.recipes import steps as S
from geocmid.recipes.checks import Facts, check_data
from geocmid.recipes.resolve import Resolved

log = logging.getLogger("geocmid.run")


class _Tee:
    """Write to the terminal and the run log at once."""

    def __init__(self, *streams: TextIO) -> None:
        self.streams = streams

    def write(self, text: str) -> int:
        for s in self.streams:
            if not s.closed:  # a logging handler may outlive the run that made it
                s.write(text)
        return len(text)

    def flush(self) -> None:
        for s in self.streams:
            if not s.closed:
                s.flush()

    @property
    def closed(self) -> bool:
        return False

    def isatty(self) -> bool:
        return False


@contextlib.contextmanager
def logging_to(path: Path) -> Iterator[logging.Handler]:
    """Log records (info and up) and everything printed go to ``path`` too; yields the file
    handler. Progress bars are not written (``isatty`` is False: no bars)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as f:
        handler = logging.FileHandler(path)
        handler.setLevel(logging.INFO)  # GDAL chatter the console demotes to debug stays out
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
        logging.getLogger().addHandler(handler)
        out, err = sys.stdout, sys.stderr
        sys.stdout, sys.stderr = _Tee(out, f), _Tee(err, f)
        try:
            yield handler
        finally:
            sys.stdout, sys.stderr = out, err
            logging.getLogger().removeHandler(handler)
            handler.close()


def fingerprint(settings: Any) -> str:
    return hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[
        :16
    ]


def step_settings(res: Resolved, name: str) -> Any:
    """What a step's outputs depend on (its recipe block, the catalog, the device)."""
    spec = res.steps.get(name, {})
    return {"step": spec, "catalog": str(res.catalog), "device": res.spec["device"]}


def changed_since_run(res: Resolved, name: str) -> bool:
    """True when ``state.json`` records step ``name`` made with other settings than now."""
    path = res.run_dir / "state.json"
    state = json.loads(path.read_text()) if path.is_file() else {}
    recorded = state.get(name, {}).get("fingerprint")
    return recorded is not None and recorded != fingerprint(step_settings(res, name))


class Runner:
    """Runs the steps of ``res`` (validated) in its run folder."""

    def __init__(self, res: Resolved, redo: list[str] | None = None) -> None:
        self.res = res
        self.redo = set(redo or [])
        self.state_path = res.run_dir / "state.json"
        self.state: dict[str, Any] = (
            json.loads(self.state_path.read_text()) if self.state_path.is_file() else {}
        )
        self.facts = Facts()

    def _save_state(self) -> None:
        tmp = self.state_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.state, indent=2))
        tmp.replace(self.state_path)

    def _settings(self, name: str) -> Any:
        return step_settings(self.res, name)

    def _guard(self, name: str, complete: bool) -> bool:
        """True when step ``name`` must run; refuses a complete step run with other settings."""
        record = self.state.get(name, {})
        fp = fingerprint(self._settings(name))
        if name in self.redo:
            folder = self.res.step_dir(name)
            if name in ("pretrain", "finetune") and folder.is_dir():
                shutil.rmtree(folder)
            return True
        if complete and record.get("fingerprint", fp) != fp:
            raise ConfigError(
                f"{self.res.run_dir}, step '{name}'",
                "its outputs were made with other settings than the recipe's now",
                f"rerun with --redo {name} (or --run-dir NEW_FOLDER for a separate run)",
            )
        return not complete

    def _step(self, name: str, complete: bool, action) -> None:
        if not self._guard(name, complete):
            log.info("step %s: outputs complete, skipped", name)
            print(f"[{name}] done (outputs complete), skipped", flush=True)
            return
        started = time.time()
        self.state[name] = {"status": "running", "fingerprint": fingerprint(self._settings(name))}
        self._save_state()
        print(f"[{name}] running", flush=True)
        try:
            action()
        except BaseException as error:  # the state file must not say "running" any more
            if isinstance(error, SystemExit) and not error.code:
                raise  # an extra DDP rank leaving after its share of training: rank 0 records
            status = "interrupted" if isinstance(error, KeyboardInterrupt) else "failed"
            self.state[name].update(status=status, seconds=round(time.time() - started, 1))
            self._save_state()
            raise
        self.state[name].update(status="done", seconds=round(time.time() - started, 1))
        self._save_state()

    def run(self) -> Path:
        """Run every step; returns the report (or the run folder when there is no report)."""
        res = self.res
        res.run_dir.mkdir(parents=True, exist_ok=True)
        (res.run_dir / "recipe.yaml").write_text(
            f"# resolved from {res.recipe.path}"
            + (f" with {', '.join(sorted(res.recipe.overridden))}" if res.recipe.overridden else "")
            + "\n" + yaml.safe_dump(res.spec, sort_keys=False)
        )  # fmt: skip
        if res.spec["threads"]:
            import torch

            torch.set_num_threads(res.spec["threads"])
        from geocmid.data.paths import gdal_env_scope

        with logging_to(res.run_dir / "logs" / "run.log") as handler:
            try:
                with gdal_env_scope(res.spec.get("gdal_env")):  # every step's data access
                    self._run_steps()
            except GeocmidError as error:
                # into the log file only: the command prints the error once on the console
                record = log.makeRecord(log.name, logging.ERROR, __file__, 0, "%s",
                                        (error.format(),), None)  # fmt: skip
                handler.handle(record)
                raise
        return res.run_dir / "report.md" if "report" in res.steps else res.run_dir

    def _run_steps(self) -> None:
        res = self.res
        if "demo_data" in res.steps:
            self._step("demo_data", S.demo_complete(res), lambda: S.run_demo(res))
        self.facts = check_data(res)  # the data exists now: check it before training
        if "pretrain" in res.steps:
            self._step("pretrain", S.pretrain_complete(res), lambda: S.run_pretrain(res))
        if "finetune" in res.steps:
            self._step("finetune", S.finetune_complete(res), lambda: S.run_finetune(res))
        if "predict" in res.steps:
            self.facts = check_data(res)
            self._step(
                "predict", S.predict_complete(res, self.facts.task),
                lambda: S.run_predict(res, self.facts),
            )  # fmt: skip
            self._styles()  # cheap, and QGIS users may have deleted or edited them
        if "embed" in res.steps:
            from geocmid.recipes import embed as E

            self._step("embed", E.embed_complete(res), lambda: E.run_embed(res))
        if "evaluate" in res.steps:
            from geocmid.recipes.evaluate import evaluate_step

            self._step("evaluate", False, lambda: evaluate_step(res, self.facts))
        if "report" in res.steps:
            from geocmid.recipes.report import write_report

            self._step("report", False, lambda: write_report(res, self.facts, self.state))

    def _styles(self) -> None:
        from geocmid.recipes.checks import model_card
        from geocmid.recipes.styles import write_styles

        res = self.res
        outputs = S.predict_outputs(res, self.facts.task)
        summary = json.loads(outputs["summary"].read_text())
        card = summary.get("model_card") or model_card(res) or {}
        classes = card.get("classes") or []
        if classes:
            for path in write_styles(outputs, classes, self.facts.task or ""):
                print(f"[predict] style {path}", flush=True)
