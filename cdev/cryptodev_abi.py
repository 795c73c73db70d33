"""The cryptodev-linux user ABI (crypto/cryptodev.h), for ``/dev/crypto`` and ``/dev/cryptodevN``.

The structs are laid out with ctypes so that pointer members get the platform's size and
alignment; on x86_64 ``session_op`` and ``crypt_op`` are 48 bytes and ``session_info_op``
268, which is what the ioctl numbers encode (tests check both against the known constants).
"""

from __future__ import annotations

import ctypes

# enum cryptodev_crypto_op_t
CRYPTO_3DES_CBC = 2
CRYPTO_MD5_HMAC = 6
CRYPTO_SHA1_HMAC = 7
CRYPTO_AES_CBC = 11
CRYPTO_MD5 = 13
CRYPTO_SHA1 = 14
CRYPTO_NULL = 16
CRYPTO_SHA2_256_HMAC = 18
CRYPTO_SHA2_384_HMAC = 19
CRYPTO_SHA2_512_HMAC = 20
CRYPTO_AES_CTR = 21
CRYPTO_AES_XTS = 22
CRYPTO_AES_ECB = 23
CRYPTO_AES_GCM = 50
CRYPTO_SHA2_224 = 103
CRYPTO_SHA2_256 = 104
CRYPTO_SHA2_384 = 105
CRYPTO_SHA2_512 = 106
CRYPTO_SHA2_224_HMAC = 107

# The algorithm table (cdev.provider names) in cryptodev's numbers: ciphers go in
# session_op.cipher, hashes and HMACs in session_op.mac (a plain hash has no key).
CIPHER_IDS = {
    "aes-cbc": CRYPTO_AES_CBC,
    "aes-ecb": CRYPTO_AES_ECB,
    "aes-ctr": CRYPTO_AES_CTR,
    "aes-xts": CRYPTO_AES_XTS,
    "aes-gcm": CRYPTO_AES_GCM,
    "3des-cbc": CRYPTO_3DES_CBC,
}
MAC_IDS = {
    "md5": CRYPTO_MD5,
    "sha1": CRYPTO_SHA1,
    "sha224": CRYPTO_SHA2_224,
    "sha256": CRYPTO_SHA2_256,
    "sha384": CRYPTO_SHA2_384,
    "sha512": CRYPTO_SHA2_512,
    "hmac-md5": CRYPTO_MD5_HMAC,
    "hmac-sha1": CRYPTO_SHA1_HMAC,
    "hmac-sha224": CRYPTO_SHA2_224_HMAC,
    "hmac-sha256": CRYPTO_SHA2_256_HMAC,
    "hmac-sha384": CRYPTO_SHA2_384_HMAC,
    "hmac-sha512": CRYPTO_SHA2_512_HMAC,
}

COP_ENCRYPT = 0
COP_DECRYPT = 1

# struct crypt_op / crypt_auth_op flags
COP_FLAG_NONE = 0
COP_FLAG_UPDATE = 1 << 0  # multi-part hash: feed, keep the state
COP_FLAG_FINAL = 1 << 1  # multi-part hash: feed and finish
COP_FLAG_WRITE_IV = 1 << 2  # write the chained IV back to crypt_op.iv
COP_FLAG_NO_ZC = 1 << 3  # no zero-copy
COP_FLAG_AEAD_TLS_TYPE = 1 << 4
COP_FLAG_AEAD_SRTP_TYPE = 1 << 5
COP_FLAG_RESET = 1 << 6  # multi-part hash: start over (with UPDATE or FINAL)

AALG_MAX_RESULT_LEN = 64

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


class CryptAuthOp(ctypes.Structure):
    """``struct crypt_auth_op`` (CIOCAUTHCRYPT): 72 bytes on x86_64.

    Plain AEAD (flags 0, AES-GCM): ``src`` is ``len`` bytes; encrypting writes ciphertext
    and then the tag to ``dst`` (``len + tag_len`` bytes); decrypting takes ciphertext and
    tag in ``src`` (``len`` includes the tag) and fails with EBADMSG on a wrong tag.
    ``tag_len`` 0 means the full tag; ``auth_len`` is at most a page.
    """

    _fields_ = (
        ("ses", ctypes.c_uint32),
        ("op", ctypes.c_uint16),
        ("flags", ctypes.c_uint16),
        ("len", ctypes.c_uint32),
        ("auth_len", ctypes.c_uint32),
        ("auth_src", ctypes.c_void_p),
        ("src", ctypes.c_void_p),
        ("dst", ctypes.c_void_p),
        ("tag", ctypes.c_void_p),
        ("tag_len", ctypes.c_uint32),
        ("iv", ctypes.c_void_p),
        ("iv_len", ctypes.c_uint32),
    )


class CphashOp(ctypes.Structure):
    """``struct cphash_op`` (CIOCCPHASH): copy one session's hash state to another."""

    _fields_ = (("dst_ses", ctypes.c_uint32), ("src_ses", ctypes.c_uint32))


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


def _ior(nr: int, size: int) -> int:
    return _ioc(_IOC_READ, nr, size)


CRIOGET = _iowr(101, ctypes.sizeof(ctypes.c_uint32))
CIOCGSESSION = _iowr(102, ctypes.sizeof(SessionOp))
CIOCFSESSION = _iow(103, ctypes.sizeof(ctypes.c_uint32))
CIOCCRYPT = _iowr(104, ctypes.sizeof(CryptOp))
CIOCGSESSINFO = _iowr(107, ctypes.sizeof(SessionInfoOp))
CIOCASYMFEAT = _ior(106, ctypes.sizeof(ctypes.c_uint32))
CIOCAUTHCRYPT = _iowr(109, ctypes.sizeof(CryptAuthOp))
CIOCASYNCCRYPT = _iow(110, ctypes.sizeof(CryptOp))
CIOCASYNCFETCH = _ior(111, ctypes.sizeof(CryptOp))
CIOCCPHASH = _iow(112, ctypes.sizeof(CphashOp))
