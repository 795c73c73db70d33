"""Published known-answer vectors for every algorithm in the table, and a runner.

Sources, named on each vector: NIST SP 800-38A (AES-ECB/CBC/CTR, appendix F), IEEE 1619-2007
(XTS-AES, annex B), the GCM specification's test cases as carried into NIST SP 800-38D's
validation (McGrew & Viega, "The Galois/Counter Mode of Operation", appendix B), NIST CAVP
TCBCMMT3.rsp (3DES-CBC), FIPS 180-4's examples (SHA-1, SHA-2), RFC 1321 (MD5), RFC 2202
(HMAC-MD5, HMAC-SHA1) and RFC 4231 (HMAC-SHA-224/256/384/512). Hashes and HMACs are also
run in two parts split at every byte boundary, and byte by byte, through ``update``/``final``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from cdev.provider import (
    AEAD,
    ALGORITHMS,
    CIPHER,
    HMAC,
    AuthenticationError,
    Capabilities,
    Provider,
    Session,
    UnsupportedError,
)

PASS, FAIL, UNSUPPORTED = "pass", "fail", "unsupported"


@dataclass(frozen=True)
class Vector:
    name: str
    algorithm: str
    key: bytes
    data: bytes
    expected: bytes  # ciphertext; AEAD: ciphertext || tag; hash/HMAC: the (leading) digest
    iv: bytes = b""
    aad: bytes = b""


def _h(s: str) -> bytes:
    return bytes.fromhex(s)


# NIST SP 800-38A appendix F: one plaintext, three keys, per mode.
_SP800_38A_PT = _h(
    "6bc1bee22e409f96e93d7e117393172aae2d8a571e03ac9c9eb76fac45af8e51"
    "30c81c46a35ce411e5fbc1191a0a52eff69f2445df4f9b17ad2b417be66c3710"
)
_SP800_38A_KEYS = (
    _h("2b7e151628aed2a6abf7158809cf4f3c"),
    _h("8e73b0f7da0e6452c810f32b809079e562f8ead2522c6b7b"),
    _h("603deb1015ca71be2b73aef0857d77811f352c073b6108d72d9810a30914dff4"),
)
_SP800_38A = {
    # mode: (IV, section numbers of the three encrypt examples, ciphertexts)
    "aes-ecb": (b"", ("F.1.1", "F.1.3", "F.1.5"), (
        "3ad77bb40d7a3660a89ecaf32466ef97f5d3d58503b9699de785895a96fdbaaf"
        "43b1cd7f598ece23881b00e3ed0306887b0c785e27e8ad3f8223207104725dd4",
        "bd334f1d6e45f25ff712a214571fa5cc974104846d0ad3ad7734ecb3ecee4eef"
        "ef7afd2270e2e60adce0ba2face6444e9a4b41ba738d6c72fb16691603c18e0e",
        "f3eed1bdb5d2a03c064b5a7e3db181f8591ccb10d410ed26dc5ba74a31362870"
        "b6ed21b99ca6f4f9f153e7b1beafed1d23304b7a39f9f3ff067d8d8f9e24ecc7",
    )),
    "aes-cbc": (bytes(range(16)), ("F.2.1", "F.2.3", "F.2.5"), (
        "7649abac8119b246cee98e9b12e9197d5086cb9b507219ee95db113a917678b2"
        "73bed6b8e3c1743b7116e69e222295163ff1caa1681fac09120eca307586e1a7",
        "4f021db243bc633d7178183a9fa071e8b4d9ada9ad7dedf4e5e738763f69145a"
        "571b242012fb7ae07fa9baac3df102e008b0e27988598881d920a9e64f5615cd",
        "f58c4c04d6e5f1ba779eabfb5f7bfbd69cfc4e967edb808d679f777bc6702c7d"
        "39f23369a9d9bacfa530e26304231461b2eb05e2c39be9fcda6c19078c6a9d1b",
    )),
    "aes-ctr": (_h("f0f1f2f3f4f5f6f7f8f9fafbfcfdfeff"), ("F.5.1", "F.5.3", "F.5.5"), (
        "874d6191b620e3261bef6864990db6ce9806f66b7970fdff8617187bb9fffdff"
        "5ae4df3edbd5d35e5b4f09020db03eab1e031dda2fbe03d1792170a0f3009cee",
        "1abc932417521ca24f2b0459fe7e6e0b090339ec0aa6faefd5ccc2c6f4ce8e94"
        "1e36b26bd1ebc670d1bd1d665620abf74f78a7f6d29809585a97daec58c6b050",
        "601ec313775789a5b7a7f504bbf3d228f443e3ca4d62b59aca84e990cacaf5c5"
        "2b0930daa23de94ce87017ba2d84988ddfc9c58db67aada613c2dd08457941a6",
    )),
}  # fmt: skip

_SP800_38A_VECTORS = tuple(
    Vector(f"SP 800-38A {sec} {mode.upper()}{len(key) * 8}", mode, key, _SP800_38A_PT, _h(ct), iv)
    for mode, (iv, secs, cts) in _SP800_38A.items()
    for key, sec, ct in zip(_SP800_38A_KEYS, secs, cts, strict=True)
)
CIPHER_VECTORS = (
    *_SP800_38A_VECTORS,
    # IEEE 1619-2007 annex B, vector 2 (XTS-AES-128) and vector 10 (XTS-AES-256); the
    # tweak is the data unit sequence number, little-endian.
    Vector(
        "IEEE 1619 XTS-AES-128 vector 2",
        "aes-xts",
        b"\x11" * 16 + b"\x22" * 16,
        b"\x44" * 32,
        _h("c454185e6a16936e39334038acef838bfb186fff7480adc4289382ecd6d394f0"),
        (0x3333333333).to_bytes(16, "little"),
    ),
    Vector(
        "IEEE 1619 XTS-AES-256 vector 10",
        "aes-xts",
        _h(
            "2718281828459045235360287471352662497757247093699959574966967627"
            "3141592653589793238462643383279502884197169399375105820974944592"
        ),
        bytes(range(256)) * 2,
        _h(
            "1c3b3a102f770386e4836c99e370cf9bea00803f5e482357a4ae12d414a3e63b"
            "5d31e276f8fe4a8d66b317f9ac683f44680a86ac35adfc3345befecb4bb188fd"
            "5776926c49a3095eb108fd1098baec70aaa66999a72a82f27d848b21d4a741b0"
            "c5cd4d5fff9dac89aeba122961d03a757123e9870f8acf1000020887891429ca"
            "2a3e7a7d7df7b10355165c8b9a6d0a7de8b062c4500dc4cd120c0f7418dae3d0"
            "b5781c34803fa75421c790dfe1de1834f280d7667b327f6c8cd7557e12ac3a0f"
            "93ec05c52e0493ef31a12d3d9260f79a289d6a379bc70c50841473d1a8cc81ec"
            "583e9645e07b8d9670655ba5bbcfecc6dc3966380ad8fecb17b6ba02469a020a"
            "84e18e8f84252070c13e9f1f289be54fbc481457778f616015e1327a02b140f1"
            "505eb309326d68378f8374595c849d84f4c333ec4423885143cb47bd71c5edae"
            "9be69a2ffeceb1bec9de244fbe15992b11b77c040f12bd8f6a975a44a0f90c29"
            "a9abc3d4d893927284c58754cce294529f8614dcd2aba991925fedc4ae74ffac"
            "6e333b93eb4aff0479da9a410e4450e0dd7ae4c6e2910900575da401fc07059f"
            "645e8b7e9bfdef33943054ff84011493c27b3429eaedb4ed5376441a77ed4385"
            "1ad77f16f541dfd269d50d6a5f14fb0aab1cbb4c1550be97f7ab4066193c4caa"
            "773dad38014bd2092fa755c824bb5e54c4f36ffda9fcea70b9c6e693e148c151"
        ),
        (0xFF).to_bytes(16, "little"),
    ),
    # NIST CAVP tdesmmt.zip, TCBCMMT3.rsp, ENCRYPT COUNT = 9 (three distinct keys).
    Vector(
        "CAVP TCBCMMT3 encrypt 9",
        "3des-cbc",
        _h("9b162a0df8ad9b61c88676e3d586434570b902f12a2046e0"),
        _h(
            "f4c1c918e77355c8156f0fd778da52bff121ae5f2f44eaf4d2754946d0e10d1f"
            "18ce3a0176e69c18b7d20b6e0d0bee5eb5edfe4bd60e4d92adcd86bce72e76f9"
            "4ee5cbcaa8b01cfddcea2ade575e66ac"
        ),
        _h(
            "1ff3c8709f403a8eff291aedf50c010df5c5ff64a8b205f1fce68564798897a3"
            "90db16ee0d053856b75898009731da290fcc119dad987277aacef694872e880c"
            "4bb41471063fae05c89f25e4bd0cad6a"
        ),
        _h("ebd6fefe029ad54b"),
    ),
)

# The GCM specification's test cases (appendix B), the vectors SP 800-38D validation starts from.
_GCM_KEY = "feffe9928665731c6d6a8f9467308308"
_GCM_IV = _h("cafebabefacedbaddecaf888")
_GCM_AAD = _h("feedfacedeadbeeffeedfacedeadbeefabaddad2")
_GCM_PT = _h(
    "d9313225f88406e5a55909c5aff5269a86a7a9531534f7da2e4c303d8a318a72"
    "1c3c0c95956809532fcf0e2449a6b525b16aedf5aa0de657ba637b39"
)
AEAD_VECTORS = (
    Vector(
        "GCM test case 2 (AES-128)",
        "aes-gcm",
        bytes(16),
        bytes(16),
        _h("0388dace60b6a392f328c2b971b2fe78ab6e47d42cec13bdf53a67b21257bddf"),
        bytes(12),
    ),
    Vector(
        "GCM test case 4 (AES-128, AAD)",
        "aes-gcm",
        _h(_GCM_KEY),
        _GCM_PT,
        _h(
            "42831ec2217774244b7221b784d0d49ce3aa212f2c02a4e035c17e2329aca12e"
            "21d514b25466931c7d8f6a5aac84aa051ba30b396a0aac973d58e091"
            "5bc94fbc3221a5db94fae95ae7121a47"
        ),
        _GCM_IV,
        _GCM_AAD,
    ),
    Vector(
        "GCM test case 10 (AES-192, AAD)",
        "aes-gcm",
        _h(_GCM_KEY + _GCM_KEY[:16]),
        _GCM_PT,
        _h(
            "3980ca0b3c00e841eb06fac4872a2757859e1ceaa6efd984628593b40ca1e19c"
            "7d773d00c144c525ac619d18c84a3f4718e2448b2fe324d9ccda2710"
            "2519498e80f1478f37ba55bd6d27618c"
        ),
        _GCM_IV,
        _GCM_AAD,
    ),
    Vector(
        "GCM test case 14 (AES-256)",
        "aes-gcm",
        bytes(32),
        bytes(16),
        _h("cea7403d4d606b6e074ec5d3baf39d18d0d1c8a799996bf0265b98b5d48ab919"),
        bytes(12),
    ),
    Vector(
        "GCM test case 16 (AES-256, AAD)",
        "aes-gcm",
        _h(_GCM_KEY * 2),
        _GCM_PT,
        _h(
            "522dc1f099567d07f47f37a32a84427d643a8cdcbfe5c0c97598a2bd2555d1aa"
            "8cb08e48590dbb3da7b08b1056828838c5f61e6393ba7a0abcc9f662"
            "76fc6ece0f4e1768cddf8853bb2d551b"
        ),
        _GCM_IV,
        _GCM_AAD,
    ),
)

_FIPS_448 = b"abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq"
_FIPS_896 = (
    b"abcdefghbcdefghicdefghijdefghijkefghijklfghijklmghijklmnhijklmno"
    b"ijklmnopjklmnopqklmnopqrlmnopqrsmnopqrstnopqrstu"
)
_HASHES = {
    # algorithm: ((source, message, digest), ...)
    "md5": (
        ("RFC 1321 A.5 \"\"", b"", "d41d8cd98f00b204e9800998ecf8427e"),
        ("RFC 1321 A.5 \"abc\"", b"abc", "900150983cd24fb0d6963f7d28e17f72"),
        ("RFC 1321 A.5 \"message digest\"", b"message digest", "f96b697d7cb7938d525a2f31aaf161d0"),
    ),
    "sha1": (
        ("FIPS 180 SHA-1 \"abc\"", b"abc", "a9993e364706816aba3e25717850c26c9cd0d89d"),
        ("FIPS 180 SHA-1 448-bit", _FIPS_448, "84983e441c3bd26ebaae4aa1f95129e5e54670f1"),
    ),
    "sha224": (
        ("FIPS 180 SHA-224 \"abc\"", b"abc",
         "23097d223405d8228642a477bda255b32aadbce4bda0b3f7e36c9da7"),
        ("FIPS 180 SHA-224 448-bit", _FIPS_448,
         "75388b16512776cc5dba5da1fd890150b0c6455cb4f58b1952522525"),
    ),
    "sha256": (
        ("FIPS 180 SHA-256 \"abc\"", b"abc",
         "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"),
        ("FIPS 180 SHA-256 448-bit", _FIPS_448,
         "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1"),
    ),
    "sha384": (
        ("FIPS 180 SHA-384 \"abc\"", b"abc",
         "cb00753f45a35e8bb5a03d699ac65007272c32ab0eded1631a8b605a43ff5bed"
         "8086072ba1e7cc2358baeca134c825a7"),
        ("FIPS 180 SHA-384 896-bit", _FIPS_896,
         "09330c33f71147e83d192fc782cd1b4753111b173b3b05d22fa08086e3b0f712"
         "fcc7c71a557e2db966c3e9fa91746039"),
    ),
    "sha512": (
        ("FIPS 180 SHA-512 \"abc\"", b"abc",
         "ddaf35a193617abacc417349ae20413112e6fa4e89a97ea20a9eeee64b55d39a"
         "2192992a274fc1a836ba3c23a3feebbd454d4423643ce80e2a9ac94fa54ca49f"),
        ("FIPS 180 SHA-512 896-bit", _FIPS_896,
         "8e959b75dae313da8cf4f72814fc143f8f7779c6eb9f7fa17299aeadb6889018"
         "501d289e4900f7e4331b99dec4b5433ac7d329eeb6dd26545e96e55b874be909"),
    ),
}  # fmt: skip
HASH_VECTORS = tuple(
    Vector(name, alg, b"", msg, _h(digest))
    for alg, cases in _HASHES.items()
    for name, msg, digest in cases
)

# RFC 2202 (MD5, SHA-1) and RFC 4231 (SHA-2): the same seven cases; case 5 checks a
# truncated output (RFC 2202: 96 bits; RFC 4231: 128 bits), compared as a prefix.
_LONG_2202 = b"\xaa" * 80
_RFC2202_CASES = (
    (b"\x0b", b"Hi There"),
    (b"Jefe", b"what do ya want for nothing?"),
    (b"\xaa", b"\xdd" * 50),
    (bytes(range(1, 26)), b"\xcd" * 50),
    (b"\x0c", b"Test With Truncation"),
    (_LONG_2202, b"Test Using Larger Than Block-Size Key - Hash Key First"),
    (_LONG_2202, b"Test Using Larger Than Block-Size Key and Larger Than One Block-Size Data"),
)
_LONG_4231 = b"\xaa" * 131
_RFC4231_CASES = (
    (b"\x0b" * 20, b"Hi There"),
    (b"Jefe", b"what do ya want for nothing?"),
    (b"\xaa" * 20, b"\xdd" * 50),
    (bytes(range(1, 26)), b"\xcd" * 50),
    (b"\x0c" * 20, b"Test With Truncation"),
    (_LONG_4231, b"Test Using Larger Than Block-Size Key - Hash Key First"),
    (
        _LONG_4231,
        b"This is a test using a larger than block-size key and a larger than block-size "
        b"data. The key needs to be hashed before being used by the HMAC algorithm.",
    ),
)
_HMACS = {
    "hmac-md5": ("RFC 2202", 16, (
        "9294727a3638bb1c13f48ef8158bfc9d", "750c783e6ab0b503eaa86e310a5db738",
        "56be34521d144c88dbb8c733f0e8b3f6", "697eaf0aca3a3aea3a75164746ffaa79",
        "56461ef2342edc00f9bab995", "6b1ab7fe4bd7bf8f0b62e6ce61b9d0cd",
        "6f630fad67cda0ee1fb1f562db3aa53e",
    )),
    "hmac-sha1": ("RFC 2202", 20, (
        "b617318655057264e28bc0b6fb378c8ef146be00", "effcdf6ae5eb2fa2d27416d5f184df9c259a7c79",
        "125d7342b9ac11cd91a39af48aa17b4f63f175d3", "4c9007f4026250c6bc8414f9bf50c86c2d7235da",
        "4c1a03424b55e07fe7f27be1", "aa4ae5e15272d00e95705637ce8a3b55ed402112",
        "e8e99d0f45237d786d6bbaa7965c7808bbff1a91",
    )),
    "hmac-sha224": ("RFC 4231", 0, (
        "896fb1128abbdf196832107cd49df33f47b4b1169912ba4f53684b22",
        "a30e01098bc6dbbf45690f3a7e9e6d0f8bbea2a39e6148008fd05e44",
        "7fb3cb3588c6c1f6ffa9694d7d6ad2649365b0c1f65d69d1ec8333ea",
        "6c11506874013cac6a2abc1bb382627cec6a90d86efc012de7afec5a",
        "0e2aea68a90c8d37c988bcdb9fca6fa8",
        "95e9a0db962095adaebe9b2d6f0dbce2d499f112f2d2b7273fa6870e",
        "3a854166ac5d9f023f54d517d0b39dbd946770db9c2b95c9f6f565d1",
    )),
    "hmac-sha256": ("RFC 4231", 0, (
        "b0344c61d8db38535ca8afceaf0bf12b881dc200c9833da726e9376c2e32cff7",
        "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843",
        "773ea91e36800e46854db8ebd09181a72959098b3ef8c122d9635514ced565fe",
        "82558a389a443c0ea4cc819899f2083a85f0faa3e578f8077a2e3ff46729665b",
        "a3b6167473100ee06e0c796c2955552b",
        "60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54",
        "9b09ffa71b942fcb27635fbcd5b0e944bfdc63644f0713938a7f51535c3a35e2",
    )),
    "hmac-sha384": ("RFC 4231", 0, (
        "afd03944d84895626b0825f4ab46907f15f9dadbe4101ec682aa034c7cebc59c"
        "faea9ea9076ede7f4af152e8b2fa9cb6",
        "af45d2e376484031617f78d2b58a6b1b9c7ef464f5a01b47e42ec3736322445e"
        "8e2240ca5e69e2c78b3239ecfab21649",
        "88062608d3e6ad8a0aa2ace014c8a86f0aa635d947ac9febe83ef4e55966144b"
        "2a5ab39dc13814b94e3ab6e101a34f27",
        "3e8a69b7783c25851933ab6290af6ca77a9981480850009cc5577c6e1f573b4e"
        "6801dd23c4a7d679ccf8a386c674cffb",
        "3abf34c3503b2a23a46efc619baef897",
        "4ece084485813e9088d2c63a041bc5b44f9ef1012a2b588f3cd11f05033ac4c6"
        "0c2ef6ab4030fe8296248df163f44952",
        "6617178e941f020d351e2f254e8fd32c602420feb0b8fb9adccebb82461e99c5"
        "a678cc31e799176d3860e6110c46523e",
    )),
    "hmac-sha512": ("RFC 4231", 0, (
        "87aa7cdea5ef619d4ff0b4241a1d6cb02379f4e2ce4ec2787ad0b30545e17cde"
        "daa833b7d6b8a702038b274eaea3f4e4be9d914eeb61f1702e696c203a126854",
        "164b7a7bfcf819e2e395fbe73b56e0a387bd64222e831fd610270cd7ea250554"
        "9758bf75c05a994a6d034f65f8f0e6fdcaeab1a34d4a6b4b636e070a38bce737",
        "fa73b0089d56a284efb0f0756c890be9b1b5dbdd8ee81a3655f83e33b2279d39"
        "bf3e848279a722c806b485a47e67c807b946a337bee8942674278859e13292fb",
        "b0ba465637458c6990e5a8c5f61d4af7e576d97ff94b872de76f8050361ee3db"
        "a91ca5c11aa25eb4d679275cc5788063a5f19741120c4f2de2adebeb10a298dd",
        "415fad6271580a531d4179bc891d87a6",
        "80b24263c7c1a3ebb71493c1dd7be8b49b46d1f41b4aeec1121b013783f8f352"
        "6b56d037e05f2598bd0fd2215d6a1e5295e64f73f63f0aec8b915a985d786598",
        "e37b6a775dc87dbaa4dfa9f96e5e3ffddebd71f8867289865df5a32d20cdc944"
        "b6022cac3c4982b10d5eeb55c3e4de15134676fb6de0446065c97440fa8c6a58",
    )),
}  # fmt: skip


def _hmac_vectors() -> tuple[Vector, ...]:
    out = []
    for alg, (rfc, key_len, digests) in _HMACS.items():
        cases = _RFC2202_CASES if rfc == "RFC 2202" else _RFC4231_CASES
        for i, ((key, msg), digest) in enumerate(zip(cases, digests, strict=True), 1):
            # RFC 2202 repeats a one-byte key to the digest length in cases 1, 3 and 5.
            k = key * key_len if key_len and len(key) == 1 else key
            out.append(Vector(f"{rfc} {alg.upper()} case {i}", alg, k, msg, _h(digest)))
    return tuple(out)


HMAC_VECTORS = _hmac_vectors()
CBC_VECTORS = tuple(v for v in CIPHER_VECTORS if v.algorithm == "aes-cbc")
ALL_VECTORS = CIPHER_VECTORS + AEAD_VECTORS + HASH_VECTORS + HMAC_VECTORS


@dataclass(frozen=True)
class Result:
    vector: str
    operation: str
    ok: bool  # passed
    detail: str = ""
    algorithm: str = ""
    status: str = PASS  # PASS, FAIL or UNSUPPORTED (the provider said so: not a failure)


def _flip_last_bit(b: bytes) -> bytes:
    return b[:-1] + bytes([b[-1] ^ 1])


def _cipher_ops(v: Vector) -> list[tuple[str, Callable[[Session], bool | bytes]]]:
    def enc(s: Session) -> bytes:
        return s.encrypt(v.data, v.iv)

    def dec(s: Session) -> bytes:
        return s.decrypt(v.expected, v.iv)

    return [("encrypt", lambda s: enc(s) == v.expected), ("decrypt", lambda s: dec(s) == v.data)]


def _aead_ops(v: Vector) -> list[tuple[str, Callable[[Session], bool | bytes]]]:
    def tag_failure(s: Session) -> bool:
        # A flipped tag bit, and then a flipped AAD bit, must each be refused.
        for data, aad in ((_flip_last_bit(v.expected), v.aad), (v.expected, v.aad + b"\x00")):
            try:
                s.aead_decrypt(v.iv, data, aad)
            except AuthenticationError:
                continue
            return False
        return True

    return [
        ("encrypt", lambda s: s.aead_encrypt(v.iv, v.data, v.aad) == v.expected),
        ("decrypt", lambda s: s.aead_decrypt(v.iv, v.expected, v.aad) == v.data),
        ("tag failure", tag_failure),
    ]


def _digest_ops(v: Vector) -> list[tuple[str, Callable[[Session], bool | bytes]]]:
    n = len(v.expected)

    def splits(s: Session) -> bool:
        for i in range(len(v.data) + 1):
            s.update(v.data[:i])
            s.update(v.data[i:])
            if s.final()[:n] != v.expected:
                return False
        return True

    def bytewise(s: Session) -> bool:
        for i in range(len(v.data)):
            s.update(v.data[i : i + 1])
        return s.final()[:n] == v.expected

    op = "hmac" if ALGORITHMS[v.algorithm].kind == HMAC else "hash"
    return [
        (op, lambda s: s.mac(v.data)[:n] == v.expected),
        (f"{op} split at every byte", splits),
        (f"{op} byte by byte", bytewise),
    ]


def _open(provider: Provider, v: Vector) -> Session:
    if ALGORITHMS[v.algorithm].kind in (CIPHER, AEAD):
        return provider.open_session(cipher=v.algorithm, key=v.key)
    return provider.open_session(mac=v.algorithm, mac_key=v.key or None)


def run_vectors(provider: Provider, caps: Capabilities | None = None) -> list[Result]:
    """Run every vector through ``provider``; errors count as failures, never raise.

    An algorithm the provider reports unsupported (in its capabilities, or by refusing it
    with :class:`UnsupportedError`) is recorded as such, not as a failure.
    """
    caps = caps or provider.capabilities()
    results: list[Result] = []
    for v in ALL_VECTORS:
        kind = ALGORITHMS[v.algorithm].kind
        ops = _cipher_ops(v) if kind == CIPHER else _aead_ops(v) if kind == AEAD else _digest_ops(v)
        for op, check in ops:
            multipart = "split" in op or "byte by byte" in op
            if not caps.supports(v.algorithm) or (multipart and not caps.multipart):
                results.append(Result(v.name, op, False, "not offered", v.algorithm, UNSUPPORTED))
                continue
            try:
                with _open(provider, v) as s:
                    ok = bool(check(s))
                status, detail = (PASS, "") if ok else (FAIL, "wrong result")
            except UnsupportedError as exc:
                status, detail = UNSUPPORTED, str(exc)
            except Exception as exc:  # a failing provider is a result, not a crash
                status, detail = FAIL, f"{type(exc).__name__}: {exc}"
            results.append(Result(v.name, op, status == PASS, detail, v.algorithm, status))
    return results
