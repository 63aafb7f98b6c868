"""Gradients through the torch twin, for every package that needs them (explanations, synthesis).

``input_gradients`` is the one place that changes torch state for a gradient: it turns gradient
mode on and freezes the twin's parameters (only input and activation gradients are needed), and
puts both back in ``finally``, whatever happens in between. The module it yields checks the
work's ``Cancellation`` before every forward pass, so captum's internal batches (SmoothGrad's
noisy samples, integrated gradients' path points) and synthesis steps stop at the next one.

Where the load-time gate allowed it (``service.inference.bf16_gate``), a twin is marked
``set_bf16``: the module ``input_gradients`` yields then runs its forward passes under CPU
bfloat16 autocast and returns float32 scores. One-pass methods that read the twin's activations
(plain gradient, Grad-CAM) call the twin themselves and stay FP32.

Those one-face passes run on a thread of their own (``on_one_face_thread``), the one thread whose
torch takes ``ONE_FACE_THREADS`` intra-op threads, once, when ``start_one_face_thread`` starts
it at load.
"""

from __future__ import annotations

import contextvars
import logging
import threading
import weakref
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import Any, TypeVar

import torch
from torch import nn

from service.common.cancellation import Cancellation, holding_shared

log = logging.getLogger(__name__)
T = TypeVar("T")

Head = Callable[[torch.Tensor, dict[str, torch.Tensor]], torch.Tensor]
"""The twin's ``(logits, activations)`` -> what to differentiate, ``(N, K)``."""


class LogitsOnly(nn.Module):
    """The twin with its activations dropped: ``(N, 3, H, W) -> (N, C)`` logits (captum's
    ``forward_func`` shape), or ``head`` of its outputs where one is given. Each pass first
    goes through ``cancellation.batch()``."""

    def __init__(
        self,
        twin: Any,
        cancellation: Cancellation,
        head: Head | None = None,
        bf16: bool = False,
    ) -> None:
        super().__init__()
        self.twin = twin
        self.cancellation = cancellation
        self.head = head
        self.bf16 = bf16
        """forward passes under CPU bfloat16 autocast, the scores cast back to float32"""

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        self.cancellation.batch()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.bf16):
            logits, activations = self.twin(inputs)
            scores = logits if self.head is None else self.head(logits, activations)
        return scores.float()


# Twins whose gradient passes run in bfloat16 (set once at load, after the parity gate).
_BF16_TWINS: weakref.WeakSet[Any] = weakref.WeakSet()


def set_bf16(twin: Any, enabled: bool) -> None:
    """Mark ``twin``'s gradient passes through ``input_gradients`` as bfloat16 (or FP32)."""
    if enabled:
        _BF16_TWINS.add(twin)
    else:
        _BF16_TWINS.discard(twin)


def runs_bf16(twin: Any) -> bool:
    return twin in _BF16_TWINS


# One gradient computation at a time: torch already spreads each over every core, and the
# parameters' flags are state shared by every thread that uses the twin.
_TWIN_LOCK = threading.Lock()

ONE_FACE_THREADS = 1
"""torch threads of a one-face gradient pass (plain gradient, Grad-CAM, LayerCAM). Its feature
maps are too small to share out: on the project's 2-core EPYC a pass took 21.6 ms wall and CPU
on one thread against 23.1 ms wall and 31.6 ms CPU on two (``bench/bench_twin_pass.py``), and
the other cores stay free for the ONNX prediction that runs beside it and for other requests.
Batched passes (SmoothGrad's samples, integrated gradients' path) keep every thread."""

# The thread one-face passes run on. torch's thread count is process-wide, and each thread takes
# it once, at its first parallel operation: switching it around a pass would pin any thread that
# first ran torch meanwhile to one thread for good. So one thread takes ONE_FACE_THREADS once, at
# load, and the passes go to it.
_one_face: ThreadPoolExecutor | None = None
_ONE_FACE_START = threading.Lock()


def start_one_face_thread() -> None:
    """Start, once per process, the thread that one-face passes run on, with torch on
    ``ONE_FACE_THREADS`` there and the process's count everywhere else. Call it while loading,
    before serving: for the moment it takes, torch's process-wide count is one."""
    global _one_face
    with _ONE_FACE_START:
        if _one_face is not None:
            return
        threads = torch.get_num_threads()
        executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="twin-one-face")

        def take_one_thread() -> int:
            torch.set_num_threads(ONE_FACE_THREADS)
            torch.zeros(2).add_(1)  # the thread's first parallel operation: it keeps the count
            return torch.get_num_threads()

        taken = executor.submit(take_one_thread).result()
        torch.set_num_threads(threads)  # back for this thread and every thread to come
        if taken != ONE_FACE_THREADS:  # an OpenMP that shares one count among threads
            executor.shutdown()
            log.warning("torch threads are not per thread here: one-face passes use %d", threads)
            return
        _one_face = executor


def on_one_face_thread(work: Callable[[], T]) -> T:
    """``work()``'s result (or exception), computed on the one-face thread with the caller's
    context variables (its trace); in the calling thread where none was started (training,
    benches, tests that load no service)."""
    if _one_face is None:
        return work()
    context = contextvars.copy_context()
    return _one_face.submit(context.run, work).result()


@contextmanager
def input_gradients(
    twin: Any, cancellation: Cancellation | None = None, head: Head | None = None
) -> Iterator[LogitsOnly]:
    """Gradient mode on and the twin's parameters frozen for the block; both restored after.
    Blocks of different threads run one after another, and no work pauses inside one
    (``holding_shared``: a job never gives its turn away while other work waits for the twin).
    Yields the twin as captum's forward function (its logits, or ``head`` of its outputs),
    checking ``cancellation`` before each pass."""
    with _TWIN_LOCK, holding_shared():
        parameters = list(twin.parameters())
        flags = [parameter.requires_grad for parameter in parameters]
        grad_was_enabled = torch.is_grad_enabled()
        try:
            for parameter in parameters:
                parameter.requires_grad_(False)
            torch.set_grad_enabled(True)
            yield LogitsOnly(twin, cancellation or Cancellation(), head, runs_bf16(twin))
        finally:
            for parameter, flag in zip(parameters, flags, strict=True):
                parameter.requires_grad_(flag)
            torch.set_grad_enabled(grad_was_enabled)
