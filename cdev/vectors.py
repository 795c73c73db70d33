"""Known-answer vectors: NIST SP 800-38A (AES-CBC) and RFC 4231 (HMAC-SHA256)."""

from __future__ import annotations

from dataclasses import dataclass

from cdev.provider import AES_CBC, HMAC_SHA256, Provider


@dataclass(frozen=True)
class Vector:
    name: str
    algorithm: str
    key: bytes
    data: bytes
    expected: bytes
    iv: bytes = b""


_SP800_38A_IV = bytes(range(16))
_SP800_38A_PT = bytes.fromhex(
    "6bc1bee22e409f96e93d7e117393172a"
    "ae2d8a571e03ac9c9eb76fac45af8e51"
    "30c81c46a35ce411e5fbc1191a0a52ef"
    "f69f2445df4f9b17ad2b417be66c3710"
)
_CBC = {
    # F.2.1/F.2.2 CBC-AES128, F.2.3/F.2.4 CBC-AES192, F.2.5/F.2.6 CBC-AES256
    "2b7e151628aed2a6abf7158809cf4f3c": "7649abac8119b246cee98e9b12e9197d"
    "5086cb9b507219ee95db113a917678b273bed6b8e3c1743b7116e69e22229516"
    "3ff1caa1681fac09120eca307586e1a7",
    "8e73b0f7da0e6452c810f32b809079e562f8ead2522c6b7b": "4f021db243bc633d7178183a9fa071e8"
    "b4d9ada9ad7dedf4e5e738763f69145a571b242012fb7ae07fa9baac3df102e0"
    "08b0e27988598881d920a9e64f5615cd",
    "603deb1015ca71be2b73aef0857d77811f352c073b6108d72d9810a30914dff4": (
        "f58c4c04d6e5f1ba779eabfb5f7bfbd69cfc4e967edb808d679f777bc6702c7d"
        "39f23369a9d9bacfa530e26304231461b2eb05e2c39be9fcda6c19078c6a9d1b"
    ),
}

CBC_VECTORS = tuple(
    Vector(
        name=f"SP 800-38A CBC-AES{len(key) * 4}",
        algorithm=AES_CBC,
        key=bytes.fromhex(key),
        iv=_SP800_38A_IV,
        data=_SP800_38A_PT,
        expected=bytes.fromhex(ct),
    )
    for key, ct in _CBC.items()
)

_LONG_KEY = b"\xaa" * 131
HMAC_VECTORS = (
    Vector(
        "RFC 4231 case 1",
        HMAC_SHA256,
        b"\x0b" * 20,
        b"Hi There",
        bytes.fromhex("b0344c61d8db38535ca8afceaf0bf12b881dc200c9833da726e9376c2e32cff7"),
    ),
    Vector(
        "RFC 4231 case 2",
        HMAC_SHA256,
        b"Jefe",
        b"what do ya want for nothing?",
        bytes.fromhex("5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"),
    ),
    Vector(
        "RFC 4231 case 3",
        HMAC_SHA256,
        b"\xaa" * 20,
        b"\xdd" * 50,
        bytes.fromhex("773ea91e36800e46854db8ebd09181a72959098b3ef8c122d9635514ced565fe"),
    ),
    Vector(
        "RFC 4231 case 4",
        HMAC_SHA256,
        bytes(range(1, 26)),
        b"\xcd" * 50,
        bytes.fromhex("82558a389a443c0ea4cc819899f2083a85f0faa3e578f8077a2e3ff46729665b"),
    ),
    # Case 5 checks truncation to 128 bits: compare a prefix.
    Vector(
        "RFC 4231 case 5",
        HMAC_SHA256,
        b"\x0c" * 20,
        b"Test With Truncation",
        bytes.fromhex("a3b6167473100ee06e0c796c2955552b"),
    ),
    Vector(
        "RFC 4231 case 6",
        HMAC_SHA256,
        _LONG_KEY,
        b"Test Using Larger Than Block-Size Key - Hash Key First",
        bytes.fromhex("60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54"),
    ),
    Vector(
        "RFC 4231 case 7",
        HMAC_SHA256,
        _LONG_KEY,
        b"This is a test using a larger than block-size key and a larger than block-size "
        b"data. The key needs to be hashed before being used by the HMAC algorithm.",
        bytes.fromhex("9b09ffa71b942fcb27635fbcd5b0e944bfdc63644f0713938a7f51535c3a35e2"),
    ),
)

ALL_VECTORS = CBC_VECTORS + HMAC_VECTORS


@dataclass(frozen=True)
class Result:
    vector: str
    operation: str
    ok: bool
    detail: str = ""


def run_vectors(provider: Provider) -> list[Result]:
    """Run every vector through ``provider``; errors count as failures, never raise."""
    results: list[Result] = []
    for v in CBC_VECTORS:
        for op in ("encrypt", "decrypt"):
            src, want = (v.data, v.expected) if op == "encrypt" else (v.expected, v.data)
            try:
                with provider.open_session(cipher=AES_CBC, key=v.key) as s:
                    got = s.encrypt(src, v.iv) if op == "encrypt" else s.decrypt(src, v.iv)
                ok = got == want
                detail = "" if ok else f"got {got.hex()[:32]}..."
            except Exception as exc:  # a failing provider is a result, not a crash
                ok, detail = False, f"{type(exc).__name__}: {exc}"
            results.append(Result(v.name, op, ok, detail))
    for v in HMAC_VECTORS:
        try:
            with provider.open_session(mac=HMAC_SHA256, mac_key=v.key) as s:
                got = s.mac(v.data)[: len(v.expected)]
            ok = got == v.expected
            detail = "" if ok else f"got {got.hex()[:32]}..."
        except Exception as exc:
            ok, detail = False, f"{type(exc).__name__}: {exc}"
        results.append(Result(v.name, "hmac", ok, detail))
    return results
