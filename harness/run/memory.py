"""Peak memory of an arm's evaluation, and the allocator settings that keep it comparable
between arms: on CUDA the allocator's peak; on a CPU the model's weights plus the growth of
anonymous resident memory, with glibc's mmap threshold fixed for evals and each training in
a malloc arena of its own. env.describe() records which of the two a run measured."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

# What `peak_memory_bytes` measures, by device; env.describe() records it with the run.
MEMORY_KINDS = {
    "cuda": ("cuda_max_memory_allocated",
             "CUDA memory allocated at peak during this arm's evaluation (peak reset per arm)"),
    "cpu": ("eval_weights_plus_anon_rss_increase",
            "the model's weights and buffers (bytes of its tensors) plus the peak increase of the "
            "process's anonymous resident memory during this arm's evaluation over its start "
            "(sampled every 10 ms; glibc's free heap released first, its mmap threshold fixed "
            "at 128 KiB for evals, each training in a thread and malloc arena of its own), so "
            "what earlier phases such as training left resident is not counted"),
}
_RSS_INTERVAL_S = 0.01  # a decode step of a 135M model takes ~30 ms on 2 cores


class PeakMemory:
    """Peak memory of one arm's evaluation phase, as a context manager.

    On CUDA: the allocator's peak since entry. On a CPU the process's RSS holds whatever
    earlier phases left: after training, the default suite's adapter (16 eval items, 10 steps)
    started its eval with 1,187 MiB resident against the zero-shot arm's 599 MiB and peaked
    563 MiB higher (2,239 vs 1,676 MiB), while the same adapter evaluated in a fresh process
    peaks at 1.81 vs 1.77 GiB. So
    the phase reports the weights of ``model`` (bytes of its tensors, as CUDA counts them) plus
    the peak growth of anonymous (non-file-backed) resident memory over the phase's start:
    file-backed pages are left out because weights loaded from safetensors are mapped from
    the file and count once, as weights, when the pass first touches them."""

    def __init__(self, device: str, model: Any = None) -> None:
        self.device, self.bytes, self._model = device, 0, model
        self._stop: Any = None

    def __enter__(self) -> PeakMemory:
        import threading

        if self.device == "cuda":
            import torch

            torch.cuda.reset_peak_memory_stats()
            return self
        _release_freed_memory()
        self._start = self._peak = _anon_rss()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.wait(_RSS_INTERVAL_S):
            self._peak = max(self._peak, _anon_rss())

    def __exit__(self, *exc: Any) -> None:
        if self.device == "cuda":
            import torch

            self.bytes = int(torch.cuda.max_memory_allocated())
            return
        self._stop.set()
        self._thread.join()
        self._peak = max(self._peak, _anon_rss())
        self.bytes = weight_bytes(self._model) + self._peak - self._start


def weight_bytes(model: Any) -> int:
    """Bytes of a model's parameters and buffers, each storage counted once (tied weights)."""
    if model is None:
        return 0
    seen: dict[int, int] = {}
    for t in [*model.parameters(), *model.buffers()]:
        seen[t.data_ptr()] = t.numel() * t.element_size()
    return sum(seen.values())


# glibc raises its mmap threshold (from 128 KiB up to 32 MiB) each time a mapped block is
# freed, so after training an eval's activations land in a fragmented heap instead of fresh
# mappings. Default suite with 16 eval items and 10 steps, peak_memory_bytes of zero-shot vs
# adapter: the threshold left dynamic, 1,676 vs 2,239 MiB (process RSS) and 1,084 vs
# 1,565 MiB (weights + growth); fixed at 128 KiB for eval phases only (4 or 32 MiB for the
# training between them), 1,198 vs 1,823 MiB and 1,076 vs 1,655 MiB; fixed at 128 KiB for the
# whole run, 1,069 vs 1,043 MiB, but training then maps and unmaps every block over 128 KiB
# each step: 0.64x the tokens/s (SmolLM2-135M shapes + LoRA r8, 2 cores, alternating runs).
# So training runs in a thread of its own (its own malloc arena, whose fragments the main
# thread's evals never reuse) with a 4 MiB threshold (as fast as the dynamic one: 249 vs
# 233 tokens/s; 32 MiB measured no faster: 15.4-16.6 vs 14.6-16.5 s for 6 steps), and evals
# keep 128 KiB. That costs time: every activation over 128 KiB is a fresh mapping whose pages
# the kernel faults in and zeroes. `harness run suites/default.toml --eval-only` (the
# zero-shot arm, uncached) took 59.7-60.5 s, 29.7-29.9 s of it system time (14.9M page
# faults); with evals at 32 MiB (the ceiling of glibc's own dynamic threshold) 45.6-46.4 s,
# 6.7-7.7 s system, 2.5-2.8M faults, the same scores (alternating runs, 2 idle cores). But
# the heap then keeps what it freed, laid out differently from run to run, and the number
# stopped repeating: the zero-shot arm's peak_memory_bytes ranged 1.75-1.95 GiB over 7 runs
# of the same evaluation (the adapter's 1.86-1.96, so the arms differed by +19 to +107 MiB),
# against 1.72-1.73 GiB at 128 KiB. glibc's count of bytes in use (mallinfo2) repeated to
# the byte (1,562.2 MiB, 3 runs) but took 4.1-4.4 ms a call, 40% of a core at the 10 ms
# sampling (3-5 ms at 128 KiB too: ~18k small free chunks in the main arena to walk). With no
# mapping at all (M_MMAP_MAX 0, no trimming) the eval took 42-59 s (0.48M faults) but its
# peak ranged 1.90-1.95 GB over 13 runs (1.63-1.64 GB at 128 KiB over 4): in-use bytes equal
# at every batch, heap sizes not; 6 MB apart with one torch thread, so the threads' timing
# lays the heap out. Trimming before every batch: 2.0M faults, 1.70-1.73 GB over 3 runs.
# A number that does not repeat is worse than a slower eval, so 128 KiB stays.
EVAL_MMAP_THRESHOLD = 128 * 2**10
TRAIN_MMAP_THRESHOLD = 4 * 2**20
T = TypeVar("T")
_M_MMAP_THRESHOLD = -3  # mallopt's parameter number (malloc.h)


def steady_allocator() -> None:
    """Fix glibc's mmap threshold at its initial 128 KiB (CPU runs, from before the first
    model loads; a training raises it while it runs), so every arm's eval phase, before or
    after a training, allocates the same way (a no-op where the C library is not glibc)."""
    _mmap_threshold(EVAL_MMAP_THRESHOLD)


def in_training_arena(fn: Callable[[], T]) -> T:
    """``fn()`` (a CPU training) in a thread of its own, so glibc serves it from another
    malloc arena than the main thread's evals, with the training threshold while it runs.
    Ctrl-C / SIGTERM reach the main thread: they are raised in the training thread too, which
    unwinds as it would have in the main thread, then the main thread re-raises."""
    import threading

    box: dict[str, Any] = {}
    done = threading.Event()  # is_alive() can say False after a join that a signal broke

    def target() -> None:
        try:
            box["value"] = fn()
        except BaseException as e:  # handed to the caller's thread below
            box["error"] = e
        finally:
            done.set()

    # daemon: a worker that ignores the interrupt must not keep the process alive after the
    # main thread has saved the failed record
    worker = threading.Thread(target=target, name="harness-train", daemon=True)
    _mmap_threshold(TRAIN_MMAP_THRESHOLD)
    try:
        worker.start()
        worker.join()
    except KeyboardInterrupt:
        _interrupt(worker, done)
        raise
    finally:
        steady_allocator()
    if "error" in box:
        raise box["error"]
    return box["value"]


def _interrupt(worker: Any, done: Any) -> None:
    """Raise KeyboardInterrupt in ``worker`` (at its next Python instruction: a CPU training
    step is seconds) and wait up to 60 s for it to unwind."""
    import ctypes

    if worker.ident is not None and not done.is_set():
        ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(worker.ident),
                                                   ctypes.py_object(KeyboardInterrupt))
        done.wait(timeout=60)


def _mmap_threshold(nbytes: int) -> None:
    libc = _glibc()
    if libc is not None:
        libc.mallopt(_M_MMAP_THRESHOLD, nbytes)


def _release_freed_memory() -> None:
    """Collect what the previous phase dropped (a trainer, its optimizer states, the zero-shot
    model) and hand glibc's free heap back to the OS, so an arm's eval phase starts from
    what is live."""
    import gc

    gc.collect()
    libc = _glibc()
    if libc is not None:
        libc.malloc_trim(0)
    steady_allocator()


def _glibc() -> Any:
    import ctypes

    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.malloc_trim, libc.mallopt  # noqa: B018 - glibc only (not macOS, musl)
    except (OSError, AttributeError):
        return None
    return libc


def _anon_rss() -> int:
    """Resident memory not backed by a file or shared memory (RSS minus psutil's ``shared``:
    Linux's RssAnon). Where psutil reports no shared pages (macOS), all of RSS."""
    import psutil

    info = psutil.Process().memory_info()
    return int(info.rss - getattr(info, "shared", 0))
