"""The cryptodev-linux user ABI (crypto/cryptodev.h), for ``/dev/crypto`` and ``/dev/cryptodevN``.

The structs are laid out with ctypes so that pointer members get the platform's size and
alignment; on x86_64 ``session_op`` and ``crypt_op`` are 48 bytes and ``session_info_op``
268, which is what the ioctl numbers encode (tests check both against the known constants).
"""

from __future__ import annotations

import ctypes

CRYPTO_AES_CBC = 11
CRYPTO_NULL = 16
CRYPTO_SHA2_256_HMAC = 18
CRYPTO_AES_CTR = 21
CRYPTO_AES_GCM = 50

COP_ENCRYPT = 0
COP_DECRYPT = 1

CRYPTO_CIPHER_MAX_KEY_LEN = 64
CRYPTO_HMAC_MAX_KEY_LEN = 512
EALG_MAX_BLOCK_LEN = 16
SIOP_FLAG_KERNEL_DRIVER_ONLY = 1


class SessionOp(ctypes.Structure):
    _fields_ = (
        ("cipher", ctypes.c_uint32),
        ("mac", ctypes.c_uint32),
        ("keylen", ctypes.c_uint32),
        ("key", ctypes.c_void_p),
        ("mackeylen", ctypes.c_uint32),
        ("mackey", ctypes.c_void_p),
        ("ses", ctypes.c_uint32),
    )


class CryptOp(ctypes.Structure):
    _fields_ = (
        ("ses", ctypes.c_uint32),
        ("op", ctypes.c_uint16),
        ("flags", ctypes.c_uint16),
        ("len", ctypes.c_uint32),
        ("src", ctypes.c_void_p),
        ("dst", ctypes.c_void_p),
        ("mac", ctypes.c_void_p),
        ("iv", ctypes.c_void_p),
    )


class CryptOpBytes(ctypes.Structure):
    """``crypt_op`` with ``src`` and ``iv`` typed as ``char *``: assigning a ``bytes`` object
    stores a pointer to its buffer without copying (ctypes keeps it alive), which is the
    cheapest way to hand read-only data to the kernel from Python. Same layout as CryptOp.
    """

    _fields_ = (
        ("ses", ctypes.c_uint32),
        ("op", ctypes.c_uint16),
        ("flags", ctypes.c_uint16),
        ("len", ctypes.c_uint32),
        ("src", ctypes.c_char_p),
        ("dst", ctypes.c_void_p),
        ("mac", ctypes.c_void_p),
        ("iv", ctypes.c_char_p),
    )


class AlgInfo(ctypes.Structure):
    _fields_ = (
        ("cra_name", ctypes.c_char * 64),
        ("cra_driver_name", ctypes.c_char * 64),
    )


class SessionInfoOp(ctypes.Structure):
    _fields_ = (
        ("ses", ctypes.c_uint32),
        ("cipher_info", AlgInfo),
        ("hash_info", AlgInfo),
        ("alignmask", ctypes.c_uint16),
        ("flags", ctypes.c_uint32),
    )


# asm-generic/ioctl.h encoding: dir(2) | size(14) | type(8) | nr(8).
_IOC_WRITE = 1
_IOC_READ = 2


def _ioc(direction: int, nr: int, size: int) -> int:
    return (direction << 30) | (size << 16) | (ord("c") << 8) | nr


def _iowr(nr: int, size: int) -> int:
    return _ioc(_IOC_READ | _IOC_WRITE, nr, size)


def _iow(nr: int, size: int) -> int:
    return _ioc(_IOC_WRITE, nr, size)


CRIOGET = _iowr(101, ctypes.sizeof(ctypes.c_uint32))
CIOCGSESSION = _iowr(102, ctypes.sizeof(SessionOp))
CIOCFSESSION = _iow(103, ctypes.sizeof(ctypes.c_uint32))
CIOCCRYPT = _iowr(104, ctypes.sizeof(CryptOp))
CIOCGSESSINFO = _iowr(107, ctypes.sizeof(SessionInfoOp))
