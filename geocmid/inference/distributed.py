"""Scene prediction on Dask distributed: blocks are tasks, the block store is the source of truth.

The block loop of :mod:`geocmid.inference.engine` already cuts a scene into independent blocks
(strips shared by neighbouring blocks are finished once, at assembly). Here each block not yet in
the work folder becomes one Dask task; a worker computes it with :func:`run_blocks` and saves it
atomically into the work folder, exactly as a single process does, so:

- the output is bitwise identical to a single-process run whatever the number of workers (the
  windows of a block are batched the same way wherever the block runs);
- a killed worker's block is simply recomputed elsewhere (Dask reschedules it), and a killed
  job resumes from the blocks saved so far when it is run again;
- many scenes are one job: the blocks of every scene are queued together and each scene is
  assembled (in the client process) as soon as its own blocks are done, while workers go on with
  the next scenes.

Each worker process loads the model once (:class:`~geocmid.inference.loading.ModelLoader`, or a
picklable :class:`Predictor` broadcast once) and keeps it for every block it runs; with
``device="auto"`` a worker that has a CUDA GPU uses it. A local cluster of ``workers``
processes is started by default; ``scheduler`` sends the job to an existing cluster (its workers
must see the same files: inputs, model and output folder).
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import rasterio
from tqdm.auto import tqdm

from geocmid.errors import ConfigError
from geocmid.inference.engine import RunSettings, run_blocks
from geocmid.inference.loading import ModelLoader
from geocmid.inference.predictor import Predictor
from geocmid.inference.reader import SceneInput, ScenePlan
from geocmid.inference.run import (
    OutputOptions,
    PredictionResult,
    SceneJob,
    finish_scene,
    prepare_scene,
)
from geocmid.inference.store import Block, WorkDir
from geocmid.inference.windows import Layout
from geocmid.inference.writers import GDAL_ENV

log = logging.getLogger(__name__)

#: A predictor, or a picklable callable that builds one (loaded once per worker process).
PredictorSource = Predictor | Callable[[], Predictor]

_CACHE: dict[str, Predictor] = {}
_CACHE_LOCK = threading.Lock()


@dataclass(frozen=True)
class SceneRun:
    """One scene (or date pair) of a job and its output name stem (None: from the inputs)."""

    inputs: list[SceneInput]
    name: str | None = None


@contextlib.contextmanager
def dask_client(workers: int = 0, scheduler: str | None = None) -> Iterator[Any]:
    """A ``distributed.Client``: to the cluster at ``scheduler``, else to a local cluster of
    ``workers`` processes (one thread each) that is closed on exit.

    Raises:
        ConfigError: both or neither given, ``workers`` < 1, or the scheduler cannot be reached.
    """
    try:
        from distributed import Client, LocalCluster
    except ImportError as error:  # pragma: no cover - a dependency
        raise ConfigError(
            "--workers / --scheduler",
            "needs Dask distributed, which is not installed",
            "pip install 'dask[distributed]'",
        ) from error
    if scheduler:
        if workers:
            raise ConfigError(
                "--workers / --scheduler",
                "both were given",
                "pass --workers N for a local cluster, or --scheduler ADDRESS for an existing one",
            )
        try:
            client = Client(scheduler, timeout="20s")
        except (OSError, TimeoutError) as error:
            raise ConfigError(
                f"--scheduler {scheduler}",
                f"no Dask scheduler answers there ({error})",
                "start one (`dask scheduler` and `dask worker ADDRESS`) or check the address",
            ) from error
        try:
            yield client
        finally:
            client.close()
        return
    if workers < 1:
        raise ConfigError("--workers", f"{workers} is not a number of workers", "use 1 or more")
    cluster = LocalCluster(
        n_workers=workers,
        threads_per_worker=1,
        processes=True,
        dashboard_address=":0",  # any free port: no clash with another cluster
        silence_logs=logging.ERROR,
    )
    client = Client(cluster)
    try:
        yield client
    finally:
        client.close()
        cluster.close()


def predict_scenes(
    source: PredictorSource,
    runs: Sequence[SceneRun],
    out_dir: str | os.PathLike[str],
    settings: RunSettings | None = None,
    options: OutputOptions | None = None,
    *,
    client: Any = None,
    workers: int = 0,
    scheduler: str | None = None,
    predictor: Predictor | None = None,
    grid: str = "first",
    resampling: str = "bilinear",
    bands: tuple[int, ...] | None = None,
    overwrite: bool = False,
    progress: bool = True,
) -> list[PredictionResult]:
    """Predict many scenes as one Dask job; same outputs as :func:`predict_scene` per scene.

    Args:
        source: the model for the workers: a :class:`Predictor` (pickled and broadcast once; a
            TorchScript model cannot be pickled, use a loader) or a picklable callable returning
            one, e.g. :class:`~geocmid.inference.loading.ModelLoader` (each worker loads it once).
        runs: the scenes (a date pair for change) and their output names.
        out_dir: output folder (every worker must be able to write to it).
        client: a ``distributed.Client`` to use; else one is made from ``workers`` /
            ``scheduler`` (see :func:`dask_client`).
        predictor: the model in this process (planning, fingerprints, assembly); default:
            ``source`` itself or ``source()``.
        grid, resampling, bands, overwrite, progress: as for :func:`predict_scene`.

    Returns:
        One :class:`PredictionResult` per run, in order; ``blocks_run`` counts the blocks
        computed by the workers in this call.

    Raises:
        ConfigError / DataError / ModelError: as :func:`predict_scene`, before any task runs;
        a worker's error is raised here once the job stops (blocks saved so far are kept).
    """
    if predictor is None:
        predictor = source if isinstance(source, Predictor) else source()
    if client is None:
        with dask_client(workers, scheduler) as own:
            return predict_scenes(
                source, runs, out_dir, settings, options, client=own, predictor=predictor,
                grid=grid, resampling=resampling, bands=bands, overwrite=overwrite,
                progress=progress,
            )  # fmt: skip
    from distributed import as_completed

    token = uuid.uuid4().hex[:12]
    key = f"{predictor.fingerprint}-{token}"
    shipped = client.scatter(source, broadcast=True, hash=False) if _is_heavy(source) else source
    results: list[PredictionResult | None] = [None] * len(runs)
    with contextlib.ExitStack() as stack:
        jobs: list[SceneJob] = []
        for run in runs:
            job = prepare_scene(
                predictor, list(run.inputs), out_dir, run.name, settings, options, grid=grid,
                resampling=resampling, bands=bands, overwrite=overwrite,
            )  # fmt: skip
            stack.callback(job.lock.release)  # released early by finish_scene on success
            jobs.append(job)
        names = [job.name for job in jobs]
        if len(set(names)) != len(names):
            raise ConfigError(
                "scenes", f"two runs write the same outputs {names}", "give each a --name"
            )
        pending: dict[int, int] = {}
        counts: dict[int, int] = {}
        futures = []
        owner: dict[str, int] = {}
        for n, job in enumerate(jobs):
            todo = job.todo()
            pending[n] = len(todo)
            counts[n] = 0
            # On every worker: scattered data has no lineage, so a plan held by one worker only
            # is lost with it when it dies, and every block of the scene with it ("already
            # forgotten"); with a copy on each worker a killed worker's blocks just rerun.
            plan = client.scatter(job.plan, hash=False, broadcast=True) if todo else None
            for block in todo:
                future = client.submit(
                    _block_task, key, shipped, plan, job.layout, str(job.work.path), block,
                    job.settings, key=f"geocmid-block-{n}-{block[0]}-{block[1]}-{token}",
                    priority=-n, pure=False,
                )  # fmt: skip
                owner[future.key] = n
                futures.append(future)
        bar = tqdm(total=len(futures), unit="block", desc="predict", disable=not progress)
        try:
            for n, job in enumerate(jobs):  # scenes already complete in the store
                if pending[n] == 0:
                    results[n] = finish_scene(job, predictor)
            for future in as_completed(futures):
                n = owner[future.key]
                counts[n] += future.result()
                pending[n] -= 1
                bar.update(1)
                if pending[n] == 0:
                    results[n] = finish_scene(jobs[n], predictor)
                    results[n].blocks_run = counts[n]  # type: ignore[union-attr]
        except BaseException:
            client.cancel(futures)
            raise
        finally:
            bar.close()
    return [r for r in results if r is not None]


def _is_heavy(source: PredictorSource) -> bool:
    """A loaded predictor is sent to each worker once, not with every task."""
    return isinstance(source, Predictor)


def _worker_predictor(key: str, source: PredictorSource) -> Predictor:
    """The predictor of this worker process, loaded at its first block and kept."""
    with _CACHE_LOCK:
        predictor = _CACHE.get(key)
        if predictor is None:
            predictor = source if isinstance(source, Predictor) else source()
            _CACHE.clear()  # one model per worker at a time
            _CACHE[key] = predictor
        return predictor


def loaded_models() -> int:
    """How many models this (worker) process holds; run it with ``client.run``."""
    return len(_CACHE)


def _block_task(
    key: str,
    source: PredictorSource,
    plan: ScenePlan,
    layout: Layout,
    work_path: str,
    block: Block,
    settings: RunSettings,
) -> int:
    """Compute one block into the work folder (skipped when already there); return 1 if run."""
    predictor = _worker_predictor(key, source)
    work = WorkDir(Path(work_path), {})
    with rasterio.Env(**GDAL_ENV):
        return run_blocks(predictor, plan, layout, work, [block], settings, progress=False)


def worker_devices(client: Any) -> dict[str, str]:
    """Worker address → the device ``"auto"`` resolves to there (for logs and checks)."""
    from geocmid.inference.loading import resolve_device

    return dict(client.run(resolve_device, "auto"))


def predict_request_distributed(
    request: Any,
    predictor: Predictor,
    runs: list[list[SceneInput]],
    name: str | None,
    settings: RunSettings,
    options: OutputOptions,
) -> list[PredictionResult]:
    """The Dask path of :func:`geocmid.workflows.predict.predict` (``workers`` / ``scheduler``):
    every run of the request is one job; each worker loads the model from the request itself.

    Raises:
        ConfigError: ``part`` given too (Dask replaces it), or see :func:`dask_client`.
    """
    if request.part is not None:
        raise ConfigError(
            "--part",
            "cannot be combined with --workers / --scheduler",
            "use Dask (--workers N or --scheduler ADDRESS) or --part i/n, not both",
        )
    model = str(request.model)
    if ":" not in model or Path(model).exists():  # a file: workers may run elsewhere
        model = str(Path(model).resolve())
    loader = ModelLoader(
        model,
        str(Path(request.card).resolve()) if request.card else None,
        request.task,
        device=request.device,
        precision=predictor.precision,
        change_input=predictor.change_input,
        background=predictor.background,  # vectors are made here, with this process's model
    )
    return predict_scenes(
        loader, [SceneRun(scenes, name) for scenes in runs], request.output, settings, options,
        workers=request.workers, scheduler=request.scheduler, predictor=predictor,
        grid=request.grid, resampling=request.resampling, bands=request.bands,
        overwrite=request.overwrite, progress=request.progress,
    )  # fmt: skip
