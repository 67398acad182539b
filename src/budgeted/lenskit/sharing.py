"""A model serialized once into one shared memory segment, loaded zero-copy.

::

    parent                                    each worker (once, at start)
    ──────                                    ────────────────────────────
    cloudpickle, protocol 5 ──> pickle bytes  attach segment by name
      numpy / torch buffers out of band       pickle.loads(bytes, buffers=views)
    one SharedMemory segment:                   numpy arrays: read-only views
      [pickle | buf0 | buf1 | ...] 64-aligned   torch tensors: over those views
    parent unmaps it, keeps the name          the model lives until the worker
    close(): unlink (also at exit / GC)         exits

One segment, not one per array (LensKit's way): a single name to clean up,
and the parent's resource tracker removes it if the parent dies. Workers
started by loky or ``spawn`` share the parent's resource tracker, whose
registry is a set, so attaching there registers nothing new and no false
"leaked shared_memory" warning is printed at exit; on Python 3.13+ workers
attach with ``track=False`` anyway.

Shared arrays are read-only (as joblib's memmaps): a worker cannot change the
model under the others. torch has no read-only tensors: CPU tensors are
shared, and an in-place change would be seen by every worker.
"""

from __future__ import annotations

import contextlib
import io
import os
import pickle
import secrets
import sys
import warnings
import weakref
from dataclasses import dataclass
from multiprocessing.shared_memory import SharedMemory

import cloudpickle

__all__ = ["SharedHandle", "SharedModel", "load_shared"]

#: Prefix of every segment name (``/dev/shm/budgeted-lk-<pid>-<hex>``).
NAME_PREFIX = "budgeted-lk-"
#: Alignment of each buffer in the segment (a cache line; SIMD friendly).
ALIGNMENT = 64


@dataclass(frozen=True)
class SharedHandle:
    """What a worker needs to load the model: small, travels in ``initargs``.

    Attributes
    ----------
    name : str
        Name of the shared memory segment.
    pickle_span : tuple of int
        ``(offset, length)`` of the pickle stream in the segment.
    buffer_spans : tuple of tuple of int
        ``(offset, length)`` of each out-of-band buffer, in pickling order.
    """

    name: str
    pickle_span: tuple[int, int]
    buffer_spans: tuple[tuple[int, int], ...]

    @property
    def nbytes(self) -> int:
        """Bytes of data in the segment (pickle stream and buffers)."""
        return self.pickle_span[1] + sum(n for _, n in self.buffer_spans)


class SharedModel:
    """An object serialized into shared memory, owned by this process.

    Parameters
    ----------
    obj : object
        Anything cloudpickle can pickle. numpy arrays (and CPU torch tensors,
        when torch is installed) go out of band: each is copied once into the
        segment and loaded as a view of it.

    Attributes
    ----------
    handle : SharedHandle
        Pass it to :func:`load_shared` in another process.
    """

    def __init__(self, obj: object) -> None:
        data, buffers = _dumps(obj)
        pickle_span, spans, size = _layout(len(data), [b.nbytes for b in buffers])
        name = f"{NAME_PREFIX}{os.getpid()}-{secrets.token_hex(4)}"
        shm = SharedMemory(name=name, create=True, size=max(size, 1))
        try:
            parts = [(pickle_span, data), *zip(spans, buffers, strict=True)]
            _copy_into(shm, parts)
        except BaseException:
            _unlink_quietly(shm)
            raise
        finally:
            for buffer in buffers:
                buffer.release()
            shm.close()  # the parent needs the name only: no mapping left here
        self.handle = SharedHandle(shm.name, pickle_span, tuple(spans))
        self._unlink = weakref.finalize(self, _unlink_quietly, shm)

    @property
    def closed(self) -> bool:
        """True once the segment is removed."""
        return not self._unlink.alive

    def close(self) -> None:
        """Remove the segment (idempotent). Workers must be done with it."""
        self._unlink()

    def __enter__(self) -> SharedModel:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()


def load_shared(handle: SharedHandle) -> tuple[object, SharedMemory]:
    """Load the object behind ``handle``, its arrays viewing the segment.

    Parameters
    ----------
    handle : SharedHandle

    Returns
    -------
    obj : object
        The object; its numpy arrays are read-only views of the segment.
    segment : SharedMemory
        Keep it referenced as long as ``obj`` lives.
    """
    shm = _attach(handle.name)
    view = shm.buf.toreadonly()
    offset, length = handle.pickle_span
    buffers = [view[o : o + n] for o, n in handle.buffer_spans]
    with view[offset : offset + length] as stream:
        obj = pickle.loads(stream, buffers=buffers)
    return obj, shm


def _attach(name: str) -> SharedMemory:
    if sys.version_info >= (3, 13):
        return SharedMemory(name=name, track=False)
    return SharedMemory(name=name)


def _unlink_quietly(shm: SharedMemory) -> None:
    with contextlib.suppress(FileNotFoundError):  # e.g. by the resource tracker
        shm.unlink()


def _layout(
    pickle_len: int, sizes: list[int]
) -> tuple[tuple[int, int], list[tuple[int, int]], int]:
    """Place the pickle stream then each buffer at aligned offsets."""
    spans = []
    end = pickle_len
    for size in sizes:
        start = -(-end // ALIGNMENT) * ALIGNMENT
        spans.append((start, size))
        end = start + size
    return (0, pickle_len), spans, end


def _copy_into(shm: SharedMemory, parts) -> None:
    """Copy each ``((offset, length), buffer)`` into the segment."""
    with shm.buf as whole:
        for (offset, length), source in parts:
            with memoryview(source) as src, whole[offset : offset + length] as dst:
                dst[:] = src


def _dumps(obj: object) -> tuple[bytes, list[memoryview]]:
    """Pickle with protocol 5; return the stream and the out-of-band buffers.

    The buffers are flat byte views of the objects' own memory (no copy).
    """
    buffers: list[pickle.PickleBuffer] = []
    stream = io.BytesIO()
    _SharingPickler(stream, buffers.append).dump(obj)
    return stream.getvalue(), [buffer.raw() for buffer in buffers]


class _SharingPickler(cloudpickle.Pickler):
    """cloudpickle, protocol 5, with CPU torch tensors' bytes out of band."""

    def __init__(self, file, buffer_callback) -> None:
        super().__init__(file, protocol=5, buffer_callback=buffer_callback)

    def reducer_override(self, obj):
        torch = sys.modules.get("torch")
        if torch is not None and isinstance(obj, torch.Tensor):
            reduced = _reduce_tensor(torch, obj)
            if reduced is not None:
                return reduced
        return super().reducer_override(obj)


def _reduce_tensor(torch, tensor):
    """Reduce a plain dense CPU tensor to a uint8 array over its storage.

    Other tensors (CUDA, sparse, quantized, subclasses, autograd non-leaves)
    return None and are pickled by torch itself, in band.
    """
    shareable = (
        type(tensor) in (torch.Tensor, torch.nn.Parameter)
        and tensor.device.type == "cpu"
        and tensor.layout == torch.strided
        and not tensor.is_quantized
        and not (tensor.is_conj() or tensor.is_neg())
        and (tensor.is_leaf or not tensor.requires_grad)
    )
    if not shareable:
        return None
    raw = torch.empty(0, dtype=torch.uint8).set_(tensor.untyped_storage())
    meta = (
        tensor.dtype,
        tensor.storage_offset(),
        tuple(tensor.size()),
        tuple(tensor.stride()),
        tensor.requires_grad,
        type(tensor) is torch.nn.Parameter,
    )
    return _rebuild_tensor, (raw.detach().numpy(), *meta)


def _rebuild_tensor(data, dtype, offset, size, stride, requires_grad, parameter):
    """Rebuild a tensor over ``data``, a (read-only) uint8 array of its storage."""
    import torch

    with warnings.catch_warnings():
        # from_numpy warns that a read-only array makes a writable tensor.
        warnings.simplefilter("ignore", UserWarning)
        storage = torch.from_numpy(data).untyped_storage()
    tensor = torch.empty(0, dtype=dtype).set_(storage, offset, size, stride)
    if parameter:
        return torch.nn.Parameter(tensor, requires_grad=requires_grad)
    return tensor.requires_grad_(requires_grad)
