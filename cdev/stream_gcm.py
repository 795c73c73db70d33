"""Suite 2 of the cdev file format: AES-256-GCM in age's STREAM construction.

The plaintext is cut in 64 KiB chunks; chunk ``i`` is sealed with the nonce
``i`` (11 bytes, big-endian) || ``final`` (one byte, 1 on the last chunk only), so chunks
cannot be reordered, dropped, duplicated or appended without a tag failing, and the
file cannot be truncated at a chunk boundary (the new last chunk was sealed as non-final).
On disk a chunk is its ciphertext followed by the 16-byte tag; there is no per-chunk IV.

Throughput is the point of this module: chunks are processed in batches of
:data:`BATCH` through reused buffers, read and written with one system call per batch.
Copying the data through the kernel costs more than AES-GCM (here, for a file in the page
cache: writing ~0.4 s/GiB, reading ~0.15 s, sealing ~0.15 s), so with two threads or more
a worker thread reads and seals while the calling thread writes the batches before it (all
three release the GIL); more threads would only wait for the writes. Memory stays bounded:
a few batches.
"""

from __future__ import annotations

import itertools
import queue
import threading
from collections.abc import Callable
from typing import BinaryIO

from cdev.errors import IntegrityError
from cdev.provider import AES_GCM, GCM_TAG, AuthenticationError, Provider, Session

TAG = GCM_TAG
BATCH = 8  # chunks per read and write: 512 KiB of plaintext
DEPTH = 3  # batches handed to the writing thread and not yet written
HEADER_NONCE = bytes(12)  # the header has its own key, so nonce 0 cannot collide
HEADER_AAD = b"cdev-enc header\x00"

Progress = Callable[[int], None]


def chunk_nonce(index: int, last: bool) -> bytes:
    return index.to_bytes(11, "big") + (b"\x01" if last else b"\x00")


def header_tag(session: Session, body: bytes) -> bytes:
    """32 bytes: GCM of 16 zero bytes with the header as associated data.

    Decrypting it proves the key (a wrong passphrase or key fails here, before any chunk)
    and that the header is as written.
    """
    return session.aead_encrypt(HEADER_NONCE, bytes(16), HEADER_AAD + body)


def check_header(session: Session, body: bytes, tag: bytes) -> None:
    try:
        ok = session.aead_decrypt(HEADER_NONCE, tag, HEADER_AAD + body) == bytes(16)
    except AuthenticationError:
        ok = False
    if not ok:
        raise IntegrityError("wrong passphrase or key, or the file header was modified")


def _readinto_full(src: BinaryIO, buf: memoryview) -> int:
    """Fill ``buf``; fewer bytes only at end of file (pipes return short reads)."""
    got = 0
    while got < len(buf):
        n = src.readinto(buf[got:])  # type: ignore[attr-defined]
        if not n:
            break
        got += n
    return got


class _Stopped(Exception):
    """The writing side gave up: the worker stops at its next batch."""


class _Pipeline:
    """Reading and crypto on a worker thread, writing on the calling thread.

    Writing is the thread that allocates the output's page-cache pages, and that is cheapest
    on the CPU whose per-CPU free lists hold the pages freed just before (by the previous
    output, a deleted file): the CPU this process started on is likelier to be that one
    than the idle CPU the scheduler gives a new thread. On a VM that reports free memory to
    its host, pages taken from elsewhere can cost five times as much to write
    (``docs/benchmarks/crypt.md``).

    The worker fills the output buffers in turn and hands each over with :meth:`put`; it
    reuses one only after the writer gave it back, and at most :attr:`depth` are out, so
    memory stays bounded. Without threads everything runs inline, in order.
    """

    def __init__(self, dst: BinaryIO, threaded: bool, progress: Progress | None) -> None:
        self._dst, self._progress = dst, progress
        self.threaded = threaded
        self.depth = DEPTH if threaded else 1
        self._ready: queue.SimpleQueue[tuple[memoryview, int] | BaseException | None] = (
            queue.SimpleQueue()
        )
        self._free = threading.Semaphore(self.depth)
        self._stopped = False

    def slot(self) -> None:
        """Wait until the next output buffer (in turn) has been written."""
        if self.threaded:
            self._free.acquire()
            if self._stopped:
                raise _Stopped

    def put(self, data: memoryview, consumed: int) -> None:
        """Hand over a finished batch: ``consumed`` input bytes gave ``data``."""
        if self.threaded:
            self._ready.put((data, consumed))
        else:
            self._write(data, consumed)

    def _write(self, data: memoryview, consumed: int) -> None:
        self._dst.write(data)
        if self._progress:
            self._progress(consumed)

    def run(self, work: Callable[[_Pipeline], int]) -> int:
        """``work(self)`` on the worker, writing what it puts; returns what it returns."""
        if not self.threaded:
            return work(self)
        result: list[int] = []

        def worker() -> None:
            try:
                result.append(work(self))
                self._ready.put(None)
            except _Stopped:
                pass
            except BaseException as exc:  # handed to the writing thread, which raises it
                self._ready.put(exc)

        # A daemon: after a failed write the worker may be blocked reading a pipe that
        # never ends; it must not keep the process alive. It owns the crypto session and
        # closes it as it leaves.
        thread = threading.Thread(target=worker, name="cdev-crypt", daemon=True)
        thread.start()
        try:
            while (item := self._ready.get()) is not None:
                if isinstance(item, BaseException):
                    raise item
                self._write(*item)
                self._free.release()
        except BaseException:
            self._stopped = True
            for _ in range(self.depth):
                self._free.release()
            raise
        thread.join()
        return result[0]


def _seal_batch(
    s: Session, src: memoryview, out: memoryview, n: int, first: int, final: bool, chunk: int
) -> memoryview:
    o = 0
    # A final batch ends with a short (possibly empty) chunk: the final one.
    count = n // chunk + 1 if final else n // chunk
    for i in range(count):
        piece = src[i * chunk : min(n, (i + 1) * chunk)]
        last = final and i == count - 1
        s.aead_encrypt_into(chunk_nonce(first + i, last), piece, out[o : o + len(piece) + TAG])
        o += len(piece) + TAG
    return out[:o]


def encrypt_chunks(
    src: BinaryIO,
    dst: BinaryIO,
    provider: Provider,
    key: bytes,
    chunk: int,
    threads: int,
    progress: Progress | None = None,
) -> int:
    """Seal ``src`` chunk by chunk to ``dst``; returns the number of plaintext bytes."""
    pipe = _Pipeline(dst, threads > 1, progress)

    def work(pipe: _Pipeline) -> int:
        # Sealing reads ``buf`` and is done before the next read: one input buffer
        # suffices. An output buffer is reused only once it was written: one per slot.
        buf = memoryview(bytearray(BATCH * chunk))
        outs = [memoryview(bytearray(BATCH * (chunk + TAG))) for _ in range(pipe.depth)]
        total = index = 0
        with provider.open_session(cipher=AES_GCM, key=key) as s:
            for batch in itertools.count():
                pipe.slot()  # outs[batch % depth] was written
                n = _readinto_full(src, buf)
                final = n < len(buf)
                out = outs[batch % pipe.depth]
                pipe.put(_seal_batch(s, buf, out, n, index, final, chunk), n)
                index += n // chunk
                total += n
                if final:
                    return total
        raise AssertionError("unreachable")

    return pipe.run(work)


def _open_batch(
    s: Session, buf: memoryview, out: memoryview, n: int, first: int, final: bool, chunk: int
) -> memoryview:
    record = chunk + TAG
    count = -(-n // record)
    o = 0
    for i in range(count):
        rec = buf[i * record : min(n, (i + 1) * record)]
        last = final and i == count - 1
        if len(rec) < TAG or (len(rec) != record and not last):
            raise IntegrityError(f"truncated or corrupt file at chunk {first + i}")
        size = len(rec) - TAG
        try:
            s.aead_decrypt_into(chunk_nonce(first + i, last), rec, out[o : o + size])
        except AuthenticationError:
            raise IntegrityError(
                f"chunk {first + i} failed authentication: the file was modified, "
                "reordered, truncated or extended"
            ) from None
        o += size
    return out[:o]


def decrypt_chunks(
    src: BinaryIO,
    dst: BinaryIO,
    provider: Provider,
    key: bytes,
    chunk: int,
    threads: int,
    progress: Progress | None = None,
) -> int:
    """Open every chunk of ``src`` to ``dst``, each batch written only once all its tags
    verified; raises :class:`IntegrityError` on any modification or truncation."""
    pipe = _Pipeline(dst, threads > 1, progress)

    def work(pipe: _Pipeline) -> int:
        # Two input buffers: the batch being opened and the one read ahead to find the end.
        ins = [memoryview(bytearray(BATCH * (chunk + TAG))) for _ in range(2)]
        outs = [memoryview(bytearray(BATCH * chunk)) for _ in range(pipe.depth)]
        total = index = 0
        with provider.open_session(cipher=AES_GCM, key=key) as s:
            n = _readinto_full(src, ins[0])
            if n == 0:
                raise IntegrityError("truncated file: no final chunk")
            for batch in itertools.count():
                cur, ahead = ins[batch % 2], ins[(batch + 1) % 2]
                # A full batch may be the last: look one batch ahead to know.
                n_next = _readinto_full(src, ahead) if n == len(cur) else 0
                final = n_next == 0
                pipe.slot()  # outs[batch % depth] was written
                out = _open_batch(s, cur, outs[batch % pipe.depth], n, index, final, chunk)
                pipe.put(out, n)
                index += BATCH
                total += len(out)
                if final:
                    return total
                n = n_next
        raise AssertionError("unreachable")

    return pipe.run(work)
