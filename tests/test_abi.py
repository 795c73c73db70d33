"""The cryptodev-linux ABI as laid out by ctypes must match the kernel's exactly."""

from __future__ import annotations

import ctypes

from cdev import cryptodev_abi as abi


def test_ioctl_numbers_match_cryptodev_linux() -> None:
    assert abi.CRIOGET == 0xC0046365
    assert abi.CIOCGSESSION == 0xC0306366
    assert abi.CIOCFSESSION == 0x40046367
    assert abi.CIOCCRYPT == 0xC0306368
    assert abi.CIOCGSESSINFO == 0xC10C636B


def test_struct_layouts_on_x86_64() -> None:
    assert ctypes.sizeof(abi.SessionOp) == 48
    offsets = {name: getattr(abi.SessionOp, name).offset for name, _ in abi.SessionOp._fields_}
    assert offsets == {
        "cipher": 0,
        "mac": 4,
        "keylen": 8,
        "key": 16,
        "mackeylen": 24,
        "mackey": 32,
        "ses": 40,
    }
    assert ctypes.sizeof(abi.CryptOp) == 48
    offsets = {name: getattr(abi.CryptOp, name).offset for name, _ in abi.CryptOp._fields_}
    assert offsets == {
        "ses": 0,
        "op": 4,
        "flags": 6,
        "len": 8,
        "src": 16,
        "dst": 24,
        "mac": 32,
        "iv": 40,
    }
    fast = {name: getattr(abi.CryptOpBytes, name).offset for name, _ in abi.CryptOpBytes._fields_}
    assert fast == offsets and ctypes.sizeof(abi.CryptOpBytes) == 48
    assert ctypes.sizeof(abi.SessionInfoOp) == 268
    assert abi.SessionInfoOp.alignmask.offset == 260
    assert abi.SessionInfoOp.flags.offset == 264


def test_algorithm_numbers() -> None:
    assert (abi.CRYPTO_AES_CBC, abi.CRYPTO_SHA2_256_HMAC) == (11, 18)
    assert (abi.COP_ENCRYPT, abi.COP_DECRYPT) == (0, 1)
