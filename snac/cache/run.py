"""The caching run: one worker process per device slot (or per torchrun rank), progress, the summary.

``cache_codes_multigpu.py`` only parses flags into a :class:`CacheConfig` and calls :func:`run_caching`.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import datetime
import json
import math
import os
import queue as queue_module
import shutil
import signal
import sys
import threading
import time
import traceback
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from ..audio import AUDIO_EXTENSIONS, AudioError, format_duration
from ..compiling import CompileCounter, compile_method_
from ..fileio import write_json_atomic
from ..lock import acquire_dir_lock
from .config import CacheConfig, default_io_threads, parse_devices, worker_cpus
from .encode import (PENDING_BATCHES, BatchEncoder, FileTooLarge, LengthBuckets, LoadedItem, find_audio_files,
                     header_seconds, load_item, make_row_ids, partition, read_file_list, sort_by_length)
from .format import (FORMAT_VERSION, INDEX_PREFIX, LOCK_NAME, MANIFEST_NAME, META_DIR, QUARANTINE_DIR,
                     SETTINGS_NAME, SHARD_PREFIX, SHARD_SUFFIX, list_shards, model_settings, now_iso, reject_log,
                     shard_schema, validate_target_sample_rate, weights_fingerprint, write_manifest)
from .index import build_index
from .writer import ShardWriter, append_rejection, scan_shards


@dataclasses.dataclass
class WorkerSpec:
    worker_index: int
    num_workers: int
    device: str
    items: list                  # [(relative path, row id)] this worker caches
    input_root: str
    output_dir: str
    pretrained_model: str
    settings: dict
    shard_rows: int
    batch_seconds: float
    max_seconds: float
    torch_threads: int
    io_threads: int
    sort_by_length: bool = True            # read the headers first, cache shortest first (fuller batches)
    compile_backend: str | None = None     # torch.compile the encoder with this backend (None: eager)
    tf32: bool = False                     # cuDNN's float32 convolutions in TF32 (default: IEEE float32)
    crash_after_shards: int | None = None  # test hook: hard exit after writing this many shards


def _exit_with_launcher(lifeline) -> None:
    """Exit at once when the launcher dies, so no orphan keeps writing shards while a rerun
    resumes (its buffered rows are simply redone). ``lifeline`` is the read end of a pipe whose
    only write end the launcher holds: it reads EOF when the launcher is gone, however it died.
    (PR_SET_PDEATHSIG would not do: a forkserver child's parent is the forkserver, which the
    worker itself keeps alive.)"""
    def watch() -> None:
        try:
            lifeline.recv()
        except (EOFError, OSError):
            pass
        os._exit(70)

    threading.Thread(target=watch, name="launcher-watch", daemon=True).start()


def load_checked_model(pretrained_model: str, settings: dict):
    """Load the frozen model on the CPU and check it is the one the run's settings were made
    with (config and weights fingerprint): a model replaced on disk mid-run stops the worker."""
    from ..model import SNAC

    model = SNAC.from_pretrained(pretrained_model).eval().requires_grad_(False)
    if model.config != settings["model_config"]:
        raise RuntimeError(f"{pretrained_model} changed while caching (its config differs from the one "
                           f"this run started with); rerun the command to resume with the model as it is now")
    fingerprint = weights_fingerprint(model)
    if fingerprint != settings["weights_fingerprint"]:
        raise RuntimeError(f"{pretrained_model} changed while caching: weights fingerprint {fingerprint[:16]} "
                           f"now vs {settings['weights_fingerprint'][:16]} at the start; rerun the command "
                           "(it refuses to mix codes of two models)")
    return model


def run_worker(spec: WorkerSpec, events=None, model=None) -> dict:
    """Cache ``spec.items``: threads read and resample files ahead while this thread encodes
    batches of equal padded length and writes shards; with ``spec.sort_by_length`` the files go
    shortest first (durations from their headers) so those batches fill up. Sends ('progress',
    ...) and finally ('done', index, stats) on ``events`` (a queue) when given. ``model`` (already
    on the device) skips loading, for benchmarks in one process. Returns the stats (``batches``
    and ``batch_fill_sum``: the mean batch fill is their ratio)."""
    import torch

    stop = threading.Event()
    if threading.current_thread() is threading.main_thread() and events is not None:
        signal.signal(signal.SIGTERM, lambda *_: stop.set())  # graceful: write the buffer, exit
        signal.signal(signal.SIGINT, signal.SIG_IGN)          # the launcher handles Ctrl-C
    torch.set_num_threads(spec.torch_threads)
    s = spec.settings
    cpu_loader = None
    if model is None:
        model = load_checked_model(spec.pretrained_model, s).to(spec.device)
        # the CPU fallback of a file too long for the GPU reads the weights again from disk:
        # nothing is copied onto the device that just ran out of memory
        cpu_loader = lambda: load_checked_model(spec.pretrained_model, s)  # noqa: E731
    compiler = None
    if spec.compile_backend is not None:
        compiler = CompileCounter(f"encoder of worker {spec.worker_index}", spec.compile_backend)
        compile_method_(model, "encode", compiler)  # the CPU fallback model stays eager
    out = Path(spec.output_dir)
    schema = shard_schema(s["num_codebooks"], s["codebook_size"], s["embed_audio"],
                          {"model_id": s["model_id"], "model_config": s["model_config"],
                           "target_sample_rate": s["target_sample_rate"], "format_version": FORMAT_VERSION})
    def written(name: str, count: int) -> None:  # in the writer thread, once the shard is durable
        if spec.crash_after_shards is not None and count >= spec.crash_after_shards:
            os._exit(3)  # test hook: die hard like a killed process (no flush, no message)

    # shards are written by a thread while this one encodes: the device does not wait on the disk
    writer = ShardWriter(out, spec.worker_index, schema, spec.shard_rows, background=True, on_written=written)
    encoder = BatchEncoder(model, spec.device, s["pad_multiple"], s["codebook_size"], cpu_loader, spec.tf32)
    batch_samples = int(spec.batch_seconds * s["model_sample_rate"])
    # Speech spans ~100 padded lengths; holding up to 16 batches of audio (~90 MB at 60 s, 24 kHz)
    # lets buckets fill before the fullest is sent early.
    buckets = LengthBuckets(s["pad_multiple"], batch_samples, PENDING_BATCHES * batch_samples,
                            sorted_input=spec.sort_by_length)
    reject_log(out, spec.worker_index).parent.mkdir(parents=True, exist_ok=True)
    stats = collections.Counter()
    pending = collections.Counter()  # progress not yet sent
    last_sent = time.monotonic()
    started = time.monotonic()
    planned: dict[str, float] = {}  # header seconds per path, when sorting (weighs the launcher's ETA)

    def send(force: bool = False) -> None:
        nonlocal last_sent
        if events is not None and pending and (force or time.monotonic() - last_sent > 0.5):
            events.put(("progress", spec.worker_index, dict(pending)))
            pending.clear()
            last_sent = time.monotonic()

    def reject(path: str, reason: str) -> None:
        append_rejection(out, spec.worker_index, path, reason)
        stats["rejected"] += 1
        pending["rejected"] += 1
        pending["files"] += 1
        pending["planned_done"] += planned.get(path, 0.0)

    def emit(batch: list[LoadedItem]) -> None:
        t0 = time.monotonic()
        # Only a file's own fault becomes a rejection (decode, format, empty, non-finite and too
        # long are caught while loading; too big for memory even alone here). Any other error is
        # the model's or the device's: it stops this worker, the run ends incomplete, and a rerun
        # redoes these files instead of recording healthy files as bad.
        try:
            codes = encoder.encode(batch)
        except FileTooLarge as e:
            if len(batch) > 1:  # cannot happen (OOM splits to single items first); be safe
                for it in batch:
                    emit([it])
                return
            reject(batch[0].path, str(e))
            return
        stats["encode_seconds"] += time.monotonic() - t0
        for it, c in zip(batch, codes):
            writer.add(it, c)
            stats["rows"] += 1
            stats["audio_seconds"] += it.duration
            stats["upsampled"] += it.sample_rate < s["target_sample_rate"]
            pending["files"] += 1
            pending["seconds"] += it.duration
            pending["planned_done"] += planned.get(it.path, 0.0)
        send()

    def emit_all(batches: list[list[LoadedItem]]) -> None:
        for batch in batches:
            fill = buckets.fill(batch)
            for counter in (stats, pending):
                counter["batches"] += 1
                counter["batch_fill_sum"] += fill
            emit(batch)

    def load(item: tuple[str, str]):
        try:
            return load_item(spec.input_root, item[0], item[1], s["model_sample_rate"],
                             s["target_sample_rate"], s["embed_audio"], spec.max_seconds)
        except (AudioError, FileNotFoundError, MemoryError) as e:
            return (item[0], str(e).replace(os.path.join(spec.input_root, item[0]) + ": ", ""))
        except Exception as e:  # anything else a decoder library throws: still one file's problem
            return (item[0], f"cannot load ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})")

    try:
        ahead = max(4, 4 * spec.io_threads)
        with ThreadPoolExecutor(spec.io_threads, thread_name_prefix="load") as pool:
            items = spec.items
            if spec.sort_by_length:  # headers only (cheap); the files' order does not change their codes
                t0 = time.monotonic()
                seconds = list(pool.map(lambda item: header_seconds(os.path.join(spec.input_root, item[0])), items))
                items = sort_by_length(items, seconds)
                planned.update((path, sec or 0.0) for (path, _), sec in zip(spec.items, seconds))
                stats["sort_seconds"] = time.monotonic() - t0
                pending.update(planned_files=len(items), planned_seconds=sum(planned.values()))
                send(force=True)
            inflight: collections.deque = collections.deque()
            it = iter(items)
            while True:
                while len(inflight) < ahead and not stop.is_set():
                    nxt = next(it, None)
                    if nxt is None:
                        break
                    inflight.append(pool.submit(load, nxt))
                if not inflight:
                    break
                res = inflight.popleft().result()
                if isinstance(res, tuple):
                    reject(*res)
                    send()
                else:
                    emit_all(buckets.add(res))
            for f in inflight:
                f.cancel()
        emit_all(buckets.flush())  # also on a graceful stop: the loaded items are cached
    except BaseException:
        with contextlib.suppress(Exception):  # keep the rows encoded before the error (a rerun skips them)
            writer.flush()
        raise
    writer.flush()
    send(force=True)
    stats["elapsed"] = time.monotonic() - started
    stats["oom_retries"] = encoder.oom_retries
    stats["tf32"] = encoder.tf32
    if compiler is not None:
        stats["compiled_graphs"] = compiler.graphs
    stats["shards"] = len(writer.written)
    stats["stopped"] = int(stop.is_set())
    result = dict(stats)
    if events is not None:
        events.put(("done", spec.worker_index, result))
    return result


def worker_context():
    """Start method for the workers: never plain fork (a forked CUDA/OpenMP state breaks).

    On Linux a forkserver that has imported torch and this module once: it never touches CUDA,
    so it is as safe as spawn, and every worker then starts in milliseconds instead of paying
    the torch import again. Elsewhere spawn.
    """
    import multiprocessing as mp

    if "forkserver" in mp.get_all_start_methods():
        ctx = mp.get_context("forkserver")
        ctx.set_forkserver_preload(["snac.cache.run", "snac.model"])
        return ctx
    return mp.get_context("spawn")


def _worker_entry(spec: WorkerSpec, events, lifeline) -> None:
    _exit_with_launcher(lifeline)
    try:
        run_worker(spec, events)
    except BaseException as e:
        events.put(("error", spec.worker_index, f"{type(e).__name__}: {e}\n{traceback.format_exc()}"))
        raise SystemExit(1)


class _Progress:
    """tqdm over audio hours on a terminal, plus plain log lines every ``log_every`` seconds.

    Workers that sort their files report every file's header duration first (planned_files,
    planned_seconds), then each finished file's (planned_done): once all are known, the bar and
    the ETA follow audio done, not files done (shortest first, files go fastest at the start).
    """

    def __init__(self, total_files: int, log_every: float, prefix: str = "[cache]"):
        self.total_files = total_files
        self.log_every = log_every
        self.prefix = prefix
        self.totals = collections.Counter()  # sums of the workers' progress deltas
        self.start = time.monotonic()
        self.last_log = self.start
        self.bar = None
        if sys.stdout.isatty() and total_files:
            from tqdm import tqdm
            self.bar = tqdm(total=0.0, unit="h", desc="audio cached", dynamic_ncols=True,
                            bar_format="{l_bar}{bar}| {n:.2f}/{total:.2f} h [{elapsed}<{remaining}]{postfix}")

    def planned(self) -> bool:
        return self.totals["planned_files"] >= self.total_files > 0 and self.totals["planned_seconds"] > 0

    def update(self, delta: dict) -> None:
        self.totals.update(delta)
        t = self.totals
        if self.bar is not None:
            if self.planned():  # hours cached + hours still to do, from the headers
                self.bar.total = (t["planned_seconds"] - t["planned_done"] + t["seconds"]) / 3600
            else:  # total hours unknown: extrapolate from the files done
                done_cached = max(t["files"] - t["rejected"], 1)
                self.bar.total = t["seconds"] / 3600 / done_cached * max(self.total_files - t["rejected"], 1)
            self.bar.n = t["seconds"] / 3600
            self.bar.set_postfix_str(f"{t['files']}/{self.total_files} files, {t['rejected']} rejected", refresh=False)
            self.bar.refresh()
        if time.monotonic() - self.last_log >= self.log_every:
            self.log()

    def line(self) -> str:
        t = self.totals
        el = time.monotonic() - self.start
        rate = t["seconds"] / el if el > 0 else 0.0
        frac = t["files"] / self.total_files if self.total_files else 1.0
        audio = f"{format_duration(t['seconds'])} of audio"
        work = frac
        if self.planned():
            work = t["planned_done"] / t["planned_seconds"]
            audio += f" ({100 * work:.1f}%)"
        eta = el / work - el if work > 0 else float("nan")
        fill = f" | batch fill {100 * t['batch_fill_sum'] / t['batches']:.0f}%" if t["batches"] else ""
        fmt = lambda s: str(datetime.timedelta(seconds=int(s))) if math.isfinite(s) else "?"
        return (f"{self.prefix} {t['files']:,}/{self.total_files:,} files ({100 * frac:.1f}%) | "
                f"{audio} | {rate:.1f} audio-s/s{fill} | rejected {t['rejected']} | "
                f"elapsed {fmt(el)} | ETA {fmt(eta)}")

    def log(self) -> None:
        self.last_log = time.monotonic()
        msg = f"{now_iso()} {self.line()}"
        if self.bar is not None:
            self.bar.write(msg)
        else:
            print(msg, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _remove_cache_files(out: Path) -> int:
    """--overwrite: delete only what a caching run writes (never other files in the directory)."""
    n = 0
    for p in list(out.glob(f"{SHARD_PREFIX}*")) + [out / MANIFEST_NAME, out / SETTINGS_NAME]:
        if p.is_file():
            p.unlink()
            n += 1
    for d in [out / META_DIR, out / QUARANTINE_DIR] + list(out.glob(f"{INDEX_PREFIX}*")) + list(out.glob(f".{INDEX_PREFIX}tmp-*")):
        if d.is_dir():
            shutil.rmtree(d)
            n += 1
    return n


def _acquire_lock(out: Path, name: str):
    """The cache's run lock (snac.lock); DirLocked is a RuntimeError, refused with one line."""
    return acquire_dir_lock(out, name, "another caching run")


def _dist_env() -> tuple[int, int, int]:
    """(rank, world_size, local_rank) from torchrun's environment; (0, 1, 0) without it."""
    return (int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)),
            int(os.environ.get("LOCAL_RANK", 0)))


SETTINGS_KEYS = ("model_config", "weights_fingerprint", "target_sample_rate", "embed_audio", "input_root",
                 "format_version")


def changed_settings(out: Path, settings: dict) -> list[str]:
    """Settings keys in which ``out``'s cache differs from ``settings`` (a new directory: none).
    Only a cache without rows may change them; one with rows raises ValueError naming the fix."""
    path = out / SETTINGS_NAME
    if not path.is_file():
        return []
    old = json.loads(path.read_text())
    diff = [k for k in SETTINGS_KEYS if old.get(k) != settings.get(k)]
    if not diff or not list_shards(out):
        return diff
    fix = "pass --overwrite to start over or choose another --output_dir"
    if diff == ["weights_fingerprint"]:
        raise ValueError(f"{out} holds codes made with other weights (fingerprint "
                         f"{old.get('weights_fingerprint') or 'not recorded'}) than {settings['model_id']} "
                         f"(fingerprint {settings['weights_fingerprint']}); {fix}")
    raise ValueError(f"{out} holds a cache made with different {', '.join(diff)} "
                     f"({', '.join(f'{k}={old.get(k)!r}' for k in diff)}); {fix}")


class _StopRequest:
    """SIGTERM / SIGINT from the start of a run: before the workers exist the request is remembered
    (no worker is started, the run ends saying so); after, the workers are asked to write their buffers
    and stop. Without it a signal during the model load or the resume scan killed the process."""

    def __init__(self, early_signals: list[int] | None = None) -> None:
        self.signum: int | None = None
        self.procs: dict = {}
        self.old = {}
        if threading.current_thread() is threading.main_thread():
            self.old = {s: signal.signal(s, self._on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
        if early_signals:  # caught by the script's own handler before this one was installed
            self.signum = early_signals[0]

    def _on_signal(self, signum, frame) -> None:
        self.signum = signum
        for p in self.procs.values():  # ask our own workers to write their buffers and stop
            if p.is_alive():
                os.kill(p.pid, signal.SIGTERM)

    def restore(self) -> None:
        for s, h in self.old.items():
            signal.signal(s, h)


def run_caching(cfg: CacheConfig, crash_after_shards: int | None = None,
                early_signals: list[int] | None = None) -> int:
    """Cache every input file's codes into ``cfg.output_dir``; returns the exit status (0 = all
    workers finished). Under torchrun (WORLD_SIZE > 1) each rank runs its slots on GPU LOCAL_RANK
    and rank 0 writes the manifest after every rank has finished. ``early_signals``: signals a script
    caught before the run started (while importing torch): the run stops as soon as it can."""
    stop = _StopRequest(early_signals)
    try:
        return _run_caching(cfg, crash_after_shards, stop)
    finally:
        stop.restore()


def _run_caching(cfg: CacheConfig, crash_after_shards: int | None, stop: _StopRequest) -> int:
    cfg.validate()
    t_start = time.monotonic()
    rank, world, local_rank = _dist_env()
    distributed = world > 1
    if distributed:
        import torch.distributed as dist
        dist.init_process_group("gloo", timeout=datetime.timedelta(days=7))
    say = (lambda msg: print(f"{now_iso()} [cache] {msg}", flush=True)) if rank == 0 else \
        (lambda msg: print(f"{now_iso()} [cache rank {rank}] {msg}", flush=True))

    # ---- pre-flight: inputs, devices, model, rate, settings; nothing is written before it passes ----
    if cfg.file_list is not None:
        input_root, files = read_file_list(cfg.file_list, cfg.input_dir)
    else:
        input_root, files = os.path.abspath(cfg.input_dir), find_audio_files(cfg.input_dir)
    if not files:
        raise ValueError(f"no audio files ({', '.join(AUDIO_EXTENSIONS)}) under {input_root}; check --input_dir")
    ids = make_row_ids(files)  # from the full list, so ids do not depend on --limit
    items = list(zip(files, ids))
    if cfg.limit is not None:
        items = items[: cfg.limit]
    devices = parse_devices(cfg.devices)
    from ..model import SNAC

    model = SNAC.from_pretrained(cfg.pretrained_model)  # on the CPU, for its config and fingerprint
    validate_target_sample_rate(cfg.target_sample_rate, model.sampling_rate)
    model_id = os.path.abspath(cfg.pretrained_model) if os.path.isdir(cfg.pretrained_model) else cfg.pretrained_model
    settings = model_settings(model_id, model.config, cfg.target_sample_rate, cfg.embed_audio, input_root,
                              weights_fingerprint(model))
    del model
    # what the encoder's convolutions run in (cuDNN's TF32 exists on GPUs only); not a setting every
    # run must share: a resume that changes it is warned about, not refused
    on_gpu = any(d.startswith("cuda") for d in devices)  # torchrun's per-rank pick below keeps this
    settings["encoder_precision"] = "tf32" if cfg.tf32 and on_gpu else "ieee"
    out = Path(cfg.output_dir).absolute()
    if rank == 0 and not cfg.overwrite:
        changed_settings(out, settings)  # refuses a cache with rows made otherwise (read only)

    # ---- output directory and settings a resumed run must share ----
    out.mkdir(parents=True, exist_ok=True)
    lock = _acquire_lock(out, LOCK_NAME if rank == 0 else f"{LOCK_NAME}-rank{rank}")
    done: set[str] = set()
    quarantined: list[dict] = []  # rows this run moved to _quarantine/ (recorded in the manifest)
    if rank == 0:
        if cfg.overwrite:
            n = _remove_cache_files(out)
            if n:
                say(f"--overwrite: removed {n} files/dirs of the previous cache in {out}")
        changed = changed_settings(out, settings)  # again under the lock
        if changed:
            old_logs = list((out / META_DIR).glob("rejected-w*.jsonl"))  # paths meant other files
            for log in old_logs:
                log.unlink()
            n = len(old_logs)
            say(f"{out} holds no rows: its settings are replaced (changed: {', '.join(changed)}); "
                f"{n} rejection logs of the old settings removed")
        earlier = json.loads((out / SETTINGS_NAME).read_text()).get("encoder_precision") \
            if (out / SETTINGS_NAME).is_file() and list_shards(out) else None
        if earlier is not None and earlier != settings["encoder_precision"]:
            say(f"warning: this cache's rows so far were encoded in {earlier}, this run encodes in "
                f"{settings['encoder_precision']}: the two differ at a few % of a trained encoder's codes "
                f"({'omit' if cfg.tf32 else 'pass'} --tf32 to match, or --overwrite to start over)")
        write_json_atomic(out / SETTINGS_NAME, settings, durable=True)
        for tmp in out.glob(f"{SHARD_PREFIX}*{SHARD_SUFFIX}.tmp-*"):  # left by a killed run
            tmp.unlink()
        # ---- resume: skip files already in complete shards; set aside stale and duplicate rows ----
        scan = scan_shards(out, listed=set(files), fix=True)
        done, quarantined = scan.done, scan.quarantined
        if scan.corrupt:
            say(f"unreadable shards renamed *.corrupt, their files are redone: {', '.join(scan.corrupt)}")
        for q in scan.quarantined:
            what = "of files no longer listed" if q["reason"] == "stale" else "already cached in an earlier shard"
            say(f"moved {q['rows']} rows {what} out of {q['shard']} into {out / q['file']} (kept, not deleted)")
    if distributed:
        dist.barrier()
        if rank != 0:  # after rank 0 set damaged shards aside; no rank has started writing yet
            done = scan_shards(out, fix=False).done
    # files cached by an earlier run with a larger --limit stay part of the cache
    listed = [f for f, _ in items] + sorted(done - {f for f, _ in items})
    if distributed:
        devices = ["cpu"] if devices == ["cpu"] else \
            ([devices[local_rank % len(devices)]] if cfg.devices else [f"cuda:{local_rank}"])
    slots = [d for d in devices for _ in range(cfg.workers_per_device)]
    num_workers = world * len(slots)
    local_cpus = worker_cpus(len(slots))
    specs = []
    for k, device in enumerate(slots):
        g = rank * len(slots) + k
        mine = [it for it in partition(items, g, num_workers) if it[0] not in done]
        specs.append(WorkerSpec(
            worker_index=g, num_workers=num_workers, device=device, items=mine, input_root=input_root,
            output_dir=str(out), pretrained_model=cfg.pretrained_model, settings=settings,
            shard_rows=cfg.shard_rows, batch_seconds=cfg.batch_seconds, max_seconds=cfg.max_seconds,
            torch_threads=local_cpus,
            io_threads=cfg.io_threads or default_io_threads(local_cpus, device), sort_by_length=cfg.sort_by_length,
            compile_backend=cfg.compile_backend if cfg.compile else None,
            tf32=cfg.tf32,
            crash_after_shards=crash_after_shards if g == 0 else None))
    todo = sum(len(s.items) for s in specs)
    mine_total = sum(len(partition(items, s.worker_index, num_workers)) for s in specs)
    say(f"{len(files):,} audio files under {input_root}" + (f" (--limit {cfg.limit})" if cfg.limit else "")
        + f"; {mine_total - todo:,} already cached, {todo:,} to do on {len(slots)} worker(s) "
        f"[{', '.join(slots)}]" + (f" of {num_workers} in all (rank {rank}/{world})" if distributed else ""))
    say(f"model {model_id}: {settings['model_sample_rate']} Hz, hop {settings['hop_length']}, strides "
        f"{settings['vq_strides']}; target {cfg.target_sample_rate} Hz; output {out}")
    if on_gpu:
        say("the encoder's convolutions run in " + (
            "TF32 (--tf32)" if cfg.tf32 else "IEEE float32 (--tf32 lets cuDNN use TF32: faster, some codes flip)"))
    if cfg.sort_by_length and todo:
        say("each worker reads its files' headers first, then caches them shortest first (fuller batches; "
            "--no-sort_by_length keeps list order)")

    # ---- run the workers and follow their progress ----
    procs = stop.procs  # the stop request reaches every worker started
    lifelines = []  # write ends; closing them (or dying) tells the workers to exit
    if stop.signum is None:
        ctx = worker_context()
        events = ctx.Queue()
    else:  # no worker will run: no process context to start
        events = queue_module.Queue()
        say(f"stopped by {signal.Signals(stop.signum).name} before encoding started: no worker started")
    for spec in specs:
        if spec.items and stop.signum is None:
            r, w = ctx.Pipe(duplex=False)
            p = ctx.Process(target=_worker_entry, args=(spec, events, r), name=f"cache-worker-{spec.worker_index}")
            p.start()
            r.close()
            lifelines.append(w)
            procs[spec.worker_index] = p
    if stop.signum is not None:  # a signal while the workers were starting: make sure each one hears it
        stop._on_signal(stop.signum, None)
    progress = _Progress(todo, cfg.log_every, "[cache]" if not distributed else f"[cache rank {rank}]")
    results: dict[int, dict] = {}
    errors: dict[int, str] = {}

    def dispatch(kind: str, g: int, payload) -> None:
        if kind == "progress":
            progress.update(payload)
        elif kind == "done":
            results[g] = payload
        elif kind == "error":
            errors[g] = payload

    try:
        while True:
            try:
                dispatch(*events.get(timeout=1.0))
            except queue_module.Empty:
                if all(not p.is_alive() for p in procs.values()):
                    break
                if time.monotonic() - progress.last_log >= cfg.log_every:
                    progress.log()
        while True:  # drain messages sent just before the last exit
            try:
                dispatch(*events.get(timeout=0.2))
            except queue_module.Empty:
                break
        for p in procs.values():
            p.join()
    finally:
        progress.close()
        for w in lifelines:
            w.close()
    failed = sorted(g for g, p in procs.items() if p.exitcode != 0 or g not in results)
    device_of = {s.worker_index: s.device for s in specs}
    for g in failed:
        why = errors.get(g, f"exit code {procs[g].exitcode} (killed or crashed without a message)")
        say(f"worker {g} on {device_of[g]} died: {why.strip().splitlines()[0]}")
        if g in errors:
            print(errors[g], file=sys.stderr, flush=True)

    # ---- merge: every rank done, then rank 0 writes the manifest and the flat index ----
    if distributed:
        gathered: list = [None] * world
        dist.all_gather_object(gathered, {"failed": failed, "results": results})
        failed = sorted(g for r in gathered for g in r["failed"])
        results = {g: v for r in gathered for g, v in r["results"].items()}
    elapsed = time.monotonic() - t_start
    encoded_seconds = sum(r.get("audio_seconds", 0.0) for r in results.values())
    batches = sum(r.get("batches", 0) for r in results.values())
    # mean over this run's encoder batches of the share of --batch_seconds holding real audio
    batch_fill = sum(r.get("batch_fill_sum", 0.0) for r in results.values()) / batches if batches else None
    graphs = sum(r.get("compiled_graphs", 0) for r in results.values()) if cfg.compile else None
    interrupted = stop.signum is not None
    status = 0 if not failed and not interrupted else 1
    if rank == 0:
        manifest = write_manifest(out, settings, {
            "listed_files": listed, "quarantined": quarantined, "failed_workers": failed,
            "interrupted": interrupted,
            "last_run": {"workers": num_workers, "devices": slots if not distributed else f"{world} ranks",
                         "elapsed_seconds": round(elapsed, 1), "files_cached": sum(r.get("rows", 0) for r in results.values()),
                         "audio_seconds_per_second": round(encoded_seconds / elapsed, 2) if elapsed > 0 else None,
                         "oom_retries": sum(r.get("oom_retries", 0) for r in results.values()),
                         "batches": batches, "mean_batch_fill": None if batch_fill is None else round(batch_fill, 4),
                         "sort_by_length": cfg.sort_by_length, "compiled_graphs": graphs,
                         # as the workers ran (their encoders' setting)
                         "tf32": sorted({r["tf32"] for r in results.values() if "tf32" in r}) or None}})
        if manifest["complete"] and manifest["rows"]:
            build_index(out)
        rej = manifest["rejected"]
        say(f"summary: {manifest['rows']:,} rows in {len(manifest['shards'])} shards, "
            f"{format_duration(manifest['hours'] * 3600)} of audio; this run cached "
            f"{sum(r.get('rows', 0) for r in results.values()):,} files ({format_duration(encoded_seconds)}) at {encoded_seconds / max(elapsed, 1e-9):.1f} audio-s/s "
            f"in {datetime.timedelta(seconds=int(elapsed))}"
            + (f" ({batches:,} encoder batches, mean fill {100 * batch_fill:.0f}%)" if batches else "")
            + (f"; torch.compile: {graphs} encoder graph(s) compiled in {len(results)} worker(s)"
               if graphs is not None else "")
            + f"; rejected {len(rej)}; upsampled to "
            f"{cfg.target_sample_rate} Hz (source rate below it) {manifest['upsampled']}")
        for r in rej[:10]:
            say(f"  rejected {r['path']}: {r['reason']}")
        if len(rej) > 10:
            say(f"  ... {len(rej) - 10} more in {out / MANIFEST_NAME}")
        if manifest["rows"] == 0 and not interrupted:
            say(f"NOTHING CACHED: 0 rows; {len(rej)} of {len(listed)} listed files rejected (reasons above); "
                "fix the input audio and rerun")
            status = 1
        elif failed or interrupted:
            say(f"INCOMPLETE: {'interrupted' if interrupted else f'{len(failed)} worker(s) died'}; "
                f"completed shards are kept: rerun the same command to finish ({manifest['missing']} files left)")
        elif not manifest["complete"]:
            say(f"INCOMPLETE: {manifest['missing']} listed files are neither cached nor rejected, "
                f"{manifest['duplicates']} duplicates; rerun the same command")
            status = 1
        else:
            say(f"done: {out / MANIFEST_NAME}")
    if distributed:
        dist.barrier()
        dist.destroy_process_group()
    lock.close()
    return status


