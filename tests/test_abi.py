"""The cryptodev-linux ABI as laid out by ctypes must match the kernel's exactly."""

from __future__ import annotations

import ctypes
import shutil
import subprocess
from pathlib import Path

from cdev import cryptodev_abi as abi


def test_ioctl_numbers_match_cryptodev_linux() -> None:
    assert abi.CRIOGET == 0xC0046365
    assert abi.CIOCGSESSION == 0xC0306366
    assert abi.CIOCFSESSION == 0x40046367
    assert abi.CIOCCRYPT == 0xC0306368
    assert abi.CIOCGSESSINFO == 0xC10C636B
    assert abi.CIOCAUTHCRYPT == 0xC048636D


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


# The declarations of cryptodev-linux's crypto/cryptodev.h that cdev uses, as a C compiler
# lays them out: ctypes must agree field by field, and so must the ioctl numbers.
C_DECLS = r"""
#include <stddef.h>
#include <stdio.h>
#include <linux/types.h>
#include <linux/ioctl.h>
struct session_op { __u32 cipher; __u32 mac; __u32 keylen; __u8 *key;
                    __u32 mackeylen; __u8 *mackey; __u32 ses; };
struct crypt_op { __u32 ses; __u16 op; __u16 flags; __u32 len;
                  __u8 *src; __u8 *dst; __u8 *mac; __u8 *iv; };
struct crypt_auth_op { __u32 ses; __u16 op; __u16 flags; __u32 len; __u32 auth_len;
                       __u8 *auth_src; __u8 *src; __u8 *dst; __u8 *tag; __u32 tag_len;
                       __u8 *iv; __u32 iv_len; };
struct alg_info { char cra_name[64]; char cra_driver_name[64]; };
struct session_info_op { __u32 ses; struct alg_info cipher_info, hash_info;
                         __u16 alignmask; __u32 flags; };
struct cphash_op { __u32 dst_ses; __u32 src_ses; };
#define F(s, f) printf(#s "." #f " %zu\n", offsetof(struct s, f))
#define S(s) printf(#s " %zu\n", sizeof(struct s))
#define N(n, v) printf(#n " %lu\n", (unsigned long)(v))
int main(void)
{
	F(session_op, cipher); F(session_op, mac); F(session_op, keylen); F(session_op, key);
	F(session_op, mackeylen); F(session_op, mackey); F(session_op, ses); S(session_op);
	F(crypt_op, ses); F(crypt_op, op); F(crypt_op, flags); F(crypt_op, len);
	F(crypt_op, src); F(crypt_op, dst); F(crypt_op, mac); F(crypt_op, iv); S(crypt_op);
	F(crypt_auth_op, ses); F(crypt_auth_op, op); F(crypt_auth_op, flags);
	F(crypt_auth_op, len); F(crypt_auth_op, auth_len); F(crypt_auth_op, auth_src);
	F(crypt_auth_op, src); F(crypt_auth_op, dst); F(crypt_auth_op, tag);
	F(crypt_auth_op, tag_len); F(crypt_auth_op, iv); F(crypt_auth_op, iv_len);
	S(crypt_auth_op);
	F(session_info_op, ses); F(session_info_op, cipher_info); F(session_info_op, hash_info);
	F(session_info_op, alignmask); F(session_info_op, flags); S(session_info_op);
	F(cphash_op, dst_ses); F(cphash_op, src_ses); S(cphash_op);
	N(CRIOGET, _IOWR('c', 101, __u32));
	N(CIOCGSESSION, _IOWR('c', 102, struct session_op));
	N(CIOCFSESSION, _IOW('c', 103, __u32));
	N(CIOCCRYPT, _IOWR('c', 104, struct crypt_op));
	N(CIOCASYMFEAT, _IOR('c', 106, __u32));
	N(CIOCGSESSINFO, _IOWR('c', 107, struct session_info_op));
	N(CIOCAUTHCRYPT, _IOWR('c', 109, struct crypt_auth_op));
	N(CIOCASYNCCRYPT, _IOW('c', 110, struct crypt_op));
	N(CIOCASYNCFETCH, _IOR('c', 111, struct crypt_op));
	N(CIOCCPHASH, _IOW('c', 112, struct cphash_op));
	return 0;
}
"""

CTYPES = {
    "session_op": abi.SessionOp,
    "crypt_op": abi.CryptOp,
    "crypt_auth_op": abi.CryptAuthOp,
    "session_info_op": abi.SessionInfoOp,
    "cphash_op": abi.CphashOp,
}


def _compile_and_run(tmp_path: Path, source: str) -> dict[str, int]:
    cc = shutil.which("cc") or shutil.which("gcc")
    assert cc, "a C compiler is part of the build dependencies (build-essential)"
    src, exe = tmp_path / "layout.c", tmp_path / "layout"
    src.write_text(source)
    subprocess.run([cc, "-Wall", "-Werror", "-o", str(exe), str(src)], check=True)
    out = subprocess.run([str(exe)], check=True, capture_output=True, text=True).stdout
    return {k: int(v) for k, v in (line.split() for line in out.splitlines())}


def test_ctypes_layout_matches_the_c_compiler(tmp_path: Path) -> None:
    c = _compile_and_run(tmp_path, C_DECLS)
    for name, cls in CTYPES.items():
        assert ctypes.sizeof(cls) == c[name], name
        for field, _ in cls._fields_:
            assert getattr(cls, field).offset == c[f"{name}.{field}"], (name, field)
    for ioc in ("CRIOGET", "CIOCGSESSION", "CIOCFSESSION", "CIOCCRYPT", "CIOCASYMFEAT",
                "CIOCGSESSINFO", "CIOCAUTHCRYPT", "CIOCASYNCCRYPT", "CIOCASYNCFETCH",
                "CIOCCPHASH"):  # fmt: skip
        assert getattr(abi, ioc) == c[ioc], ioc


def test_layout_matches_the_projects_own_header(tmp_path: Path) -> None:
    # kernel/cryptodev.h is what the guest module is built against.
    header = Path(__file__).resolve().parents[1] / "kernel" / "cryptodev.h"
    source = (
        "#include <stddef.h>\n#include <stdio.h>\n"
        f'#include "{header}"\n'
        "int main(void) {\n"
        + "".join(
            f'printf("{s}.{f} %zu\\n", offsetof(struct {s}, {f}));\n'
            for s in ("session_op", "crypt_op", "session_info_op")
            for f, _ in CTYPES[s]._fields_
        )
        + "".join(
            f'printf("{n} %lu\\n", (unsigned long){n});\n'
            for n in ("CIOCGSESSION", "CIOCFSESSION", "CIOCCRYPT", "CIOCGSESSINFO")
        )
        + "return 0; }\n"
    )
    c = _compile_and_run(tmp_path, source)
    for s in ("session_op", "crypt_op", "session_info_op"):
        for f, _ in CTYPES[s]._fields_:
            assert getattr(CTYPES[s], f).offset == c[f"{s}.{f}"], (s, f)
    for n in ("CIOCGSESSION", "CIOCFSESSION", "CIOCCRYPT", "CIOCGSESSINFO"):
        assert getattr(abi, n) == c[n], n


def test_every_table_algorithm_has_a_cryptodev_number() -> None:
    from cdev.provider import ALGORITHMS, CIPHERS, MACS

    assert set(abi.CIPHER_IDS) == set(CIPHERS)
    assert set(abi.MAC_IDS) == set(MACS)
    assert set(CIPHERS) | set(MACS) == set(ALGORITHMS)
    assert abi.COP_FLAG_RESET == 64 and abi.COP_FLAG_FINAL == 2 and abi.COP_FLAG_UPDATE == 1
