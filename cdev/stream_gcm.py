"""Suite 2 of the cdev file format: AES-256-GCM in age's STREAM construction.

The plaintext is cut in 64 KiB chunks; chunk ``i`` is sealed with the nonce
``i`` (11 bytes, big-endian) || ``final`` (one byte, 1 on the last chunk only), so chunks
cannot be reordered, dropped, duplicated or appended without a tag failing, and the
file cannot be truncated at a chunk boundary (the new last chunk was sealed as non-final).
On disk a chunk is its ciphertext followed by the 16-byte tag; there is no per-chunk IV.

Throughput is the point of this module: chunks are processed in batches of
:data:`BATCH` through reused buffers, read and written with one system call per batch,
and sealed on worker threads (providers release the GIL inside their crypto) while the
next batch is read and the previous one written. Memory stays bounded: a few batches.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import BinaryIO

from cdev.errors import IntegrityError
from cdev.provider import AES_GCM, GCM_TAG, AuthenticationError, Provider, Session

TAG = GCM_TAG
BATCH = 8  # chunks per task: 512 KiB of plaintext per read, write and task
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


class _Pipeline:
    """Per-thread sessions and an ordered queue of batch tasks on a small pool."""

    def __init__(self, provider: Provider, key: bytes, threads: int) -> None:
        self._provider, self._key = provider, key
        self._local = threading.local()
        self._opened: list[Session] = []
        self._lock = threading.Lock()
        self._pool = ThreadPoolExecutor(threads) if threads > 1 else None
        self.depth = 2 * threads
        self.pending: deque[Future[memoryview]] = deque()

    def session(self) -> Session:
        s: Session | None = getattr(self._local, "session", None)
        if s is None:
            s = self._provider.open_session(cipher=AES_GCM, key=self._key)
            self._local.session = s
            with self._lock:
                self._opened.append(s)
        return s

    def submit(self, fn: Callable[..., memoryview], *args: object) -> None:
        if self._pool is None:
            done: Future[memoryview] = Future()
            done.set_result(fn(*args))
            self.pending.append(done)
        else:
            self.pending.append(self._pool.submit(fn, *args))

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
        for s in self._opened:
            s.close()


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
    pipe = _Pipeline(provider, key, threads)
    slots = pipe.depth + 1  # a slot is reused only after its batch was written
    ins = [memoryview(bytearray(BATCH * chunk)) for _ in range(slots)]
    outs = [memoryview(bytearray(BATCH * (chunk + TAG))) for _ in range(slots)]

    def seal(slot: int, first: int, n: int, final: bool) -> memoryview:
        s = pipe.session()
        src_buf, out = ins[slot], outs[slot]
        o = 0
        # A final batch ends with a short (possibly empty) chunk: the final one.
        count = n // chunk + 1 if final else n // chunk
        for i in range(count):
            piece = src_buf[i * chunk : min(n, (i + 1) * chunk)]
            last = final and i == count - 1
            s.aead_encrypt_into(chunk_nonce(first + i, last), piece, out[o : o + len(piece) + TAG])
            o += len(piece) + TAG
        return out[:o]

    total = index = slot = 0
    try:
        while True:
            n = _readinto_full(src, ins[slot])
            final = n < len(ins[slot])
            pipe.submit(seal, slot, index, n, final)
            index += n // chunk
            total += n
            if progress:
                progress(n)
            while pipe.pending and (final or len(pipe.pending) >= pipe.depth):
                dst.write(pipe.pending.popleft().result())
            if final:
                return total
            slot = (slot + 1) % slots
    finally:
        pipe.close()


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
    record = chunk + TAG
    pipe = _Pipeline(provider, key, threads)
    slots = pipe.depth + 2  # plus one batch read ahead to find the end
    ins = [memoryview(bytearray(BATCH * record)) for _ in range(slots)]
    outs = [memoryview(bytearray(BATCH * chunk)) for _ in range(slots)]

    def open_batch(slot: int, first: int, n: int, final: bool) -> memoryview:
        s = pipe.session()
        buf, out = ins[slot], outs[slot]
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

    total = index = 0
    try:
        slot = 0
        n = _readinto_full(src, ins[slot])
        if n == 0:
            raise IntegrityError("truncated file: no final chunk")
        while True:
            full = n == len(ins[slot])
            nxt = (slot + 1) % slots
            # A full batch may be the last: look one batch ahead to know.
            n_next = _readinto_full(src, ins[nxt]) if full else 0
            final = n_next == 0
            pipe.submit(open_batch, slot, index, n, final)
            index += BATCH
            if progress:
                progress(n)
            while pipe.pending and (final or len(pipe.pending) >= pipe.depth):
                out = pipe.pending.popleft().result()
                dst.write(out)
                total += len(out)
            if final:
                return total
            slot, n = nxt, n_next
    finally:
        pipe.close()
