/*
 * virtio-cryptodev builtin engine: QEMU's crypto layer and GnuTLS
 *
 * Ciphers go through qcrypto (GnuTLS underneath in our build): AES-CBC/ECB/XTS
 * and 3DES-CBC directly, AES-CTR as an AES-ECB keystream, since qcrypto has
 * no CTR mode over GnuTLS.  Hashes and HMACs use GnuTLS directly: qcrypto in
 * QEMU 7.2 has no incremental hash, and multi-part hashing keeps a running
 * state per session (gnutls_hash_init/gnutls_hmac_init, copied for
 * CIOCCPHASH).
 *
 * The engine keeps each session's chained IV itself, so that an operation
 * without an IV continues where the previous one stopped, as cryptodev-linux
 * does: CBC continues from the last ciphertext block, CTR from the next
 * counter block, XTS keeps its tweak.
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */

#include "qemu/osdep.h"
#include "qapi/error.h"
#include "qemu/cutils.h"
#include "crypto/cipher.h"
#include "virtio-cryptodev-engine.h"
#include <gnutls/gnutls.h>
#include <gnutls/crypto.h>

/* CTR keystream is made this many bytes at a time (on the worker's stack). */
#define BUILTIN_CTR_CHUNK 1024

typedef struct BuiltinSession {
    QCryptoCipher *cipher;      /* for CTR: AES-ECB, the keystream */
    const VcdAlgInfo *calg;
    uint8_t iv[VCD_IV_LEN];     /* chained IV; the next counter for CTR */
    const VcdAlgInfo *malg;
    gnutls_hash_hd_t hash;      /* plain hash sessions */
    gnutls_hmac_hd_t hmac;      /* HMAC sessions */
    gnutls_aead_cipher_hd_t aead;   /* AES-GCM sessions */
} BuiltinSession;

/* An empty key or message is valid; the libraries want non-NULL pointers. */
static const uint8_t builtin_empty[1];

static bool builtin_cipher_alg(uint32_t alg, uint32_t keylen,
                               QCryptoCipherAlgorithm *qalg,
                               QCryptoCipherMode *mode)
{
    bool aes = true;

    switch (alg) {
    case VCD_CIPHER_AES_CBC:
        *mode = QCRYPTO_CIPHER_MODE_CBC;
        break;
    case VCD_CIPHER_AES_ECB:
    case VCD_CIPHER_AES_CTR:
        *mode = QCRYPTO_CIPHER_MODE_ECB;
        break;
    case VCD_CIPHER_AES_XTS:
        *mode = QCRYPTO_CIPHER_MODE_XTS;
        keylen /= 2;
        break;
    case VCD_CIPHER_3DES_CBC:
        *mode = QCRYPTO_CIPHER_MODE_CBC;
        *qalg = QCRYPTO_CIPHER_ALG_3DES;
        aes = false;
        break;
    default:
        return false;
    }
    if (aes) {
        *qalg = keylen == 16 ? QCRYPTO_CIPHER_ALG_AES_128 :
                keylen == 24 ? QCRYPTO_CIPHER_ALG_AES_192 :
                               QCRYPTO_CIPHER_ALG_AES_256;
    }
    return true;
}

static int builtin_digest(uint32_t alg)
{
    switch (alg) {
    case VCD_MAC_MD5:
        return GNUTLS_DIG_MD5;
    case VCD_MAC_SHA1:
        return GNUTLS_DIG_SHA1;
    case VCD_MAC_SHA224:
        return GNUTLS_DIG_SHA224;
    case VCD_MAC_SHA256:
        return GNUTLS_DIG_SHA256;
    case VCD_MAC_SHA384:
        return GNUTLS_DIG_SHA384;
    case VCD_MAC_SHA512:
        return GNUTLS_DIG_SHA512;
    default:
        return GNUTLS_DIG_UNKNOWN;
    }
}

static int builtin_hmac_alg(uint32_t alg)
{
    switch (alg) {
    case VCD_MAC_MD5_HMAC:
        return GNUTLS_MAC_MD5;
    case VCD_MAC_SHA1_HMAC:
        return GNUTLS_MAC_SHA1;
    case VCD_MAC_SHA224_HMAC:
        return GNUTLS_MAC_SHA224;
    case VCD_MAC_SHA256_HMAC:
        return GNUTLS_MAC_SHA256;
    case VCD_MAC_SHA384_HMAC:
        return GNUTLS_MAC_SHA384;
    case VCD_MAC_SHA512_HMAC:
        return GNUTLS_MAC_SHA512;
    default:
        return GNUTLS_MAC_UNKNOWN;
    }
}

static int builtin_gcm(uint32_t keylen)
{
    return keylen == 16 ? GNUTLS_CIPHER_AES_128_GCM :
           keylen == 24 ? GNUTLS_CIPHER_AES_192_GCM : GNUTLS_CIPHER_AES_256_GCM;
}

static bool builtin_supports(uint32_t alg)
{
    const VcdAlgInfo *info = vcd_alg_info(alg);
    QCryptoCipherAlgorithm qalg;
    QCryptoCipherMode mode;
    unsigned i;

    if (!info) {
        return false;
    }
    if (info->aead) {
        return true;    /* GnuTLS has AES-GCM for every key size */
    }
    if (!info->is_cipher) {
        return info->keyed ? builtin_hmac_alg(alg) != GNUTLS_MAC_UNKNOWN :
                             builtin_digest(alg) != GNUTLS_DIG_UNKNOWN;
    }
    for (i = 0; i < ARRAY_SIZE(info->keylens) && info->keylens[i]; i++) {
        if (!builtin_cipher_alg(alg, info->keylens[i], &qalg, &mode) ||
            !qcrypto_cipher_supports(qalg, mode)) {
            return false;
        }
    }
    return true;
}

static bool builtin_usable(Error **errp)
{
    if (!builtin_supports(VCD_CIPHER_AES_CBC) ||
        !builtin_supports(VCD_MAC_SHA256_HMAC)) {
        error_setg(errp, "virtio-cryptodev: QEMU's crypto layer lacks "
                   "AES-CBC or HMAC-SHA256");
        return false;
    }
    return true;
}

static void builtin_session_fini(VcdSession *ses)
{
    BuiltinSession *b = ses->priv;

    qcrypto_cipher_free(b->cipher);
    if (b->hash) {
        gnutls_hash_deinit(b->hash, NULL);
    }
    if (b->hmac) {
        gnutls_hmac_deinit(b->hmac, NULL);
    }
    if (b->aead) {
        gnutls_aead_cipher_deinit(b->aead);
    }
    explicit_bzero(b->iv, sizeof(b->iv));
    g_free(b);
    ses->priv = NULL;
}

static uint32_t builtin_session_init(VcdSession *ses, const uint8_t *key,
                                     uint32_t keylen, const uint8_t *mackey,
                                     uint32_t mackeylen)
{
    BuiltinSession *b = g_try_new0(BuiltinSession, 1);
    QCryptoCipherAlgorithm qalg;
    QCryptoCipherMode mode;

    if (!b) {
        return VCD_S_NOMEM;
    }
    ses->priv = b;
    if (ses->cipher == VCD_CIPHER_AES_GCM) {
        gnutls_datum_t k = { .data = (unsigned char *)key, .size = keylen };

        b->calg = vcd_alg_info(ses->cipher);
        if (gnutls_aead_cipher_init(&b->aead, builtin_gcm(keylen), &k) < 0) {
            b->aead = NULL;
            goto fail;
        }
    } else if (ses->cipher) {
        b->calg = vcd_alg_info(ses->cipher);
        if (!builtin_cipher_alg(ses->cipher, keylen, &qalg, &mode)) {
            goto fail;
        }
        b->cipher = qcrypto_cipher_new(qalg, mode, key, keylen, NULL);
        if (!b->cipher) {
            goto fail;
        }
    }
    if (ses->mac) {
        b->malg = vcd_alg_info(ses->mac);
        if (b->malg->keyed) {
            if (gnutls_hmac_init(&b->hmac, builtin_hmac_alg(ses->mac),
                                 mackeylen ? mackey : builtin_empty,
                                 mackeylen) < 0) {
                b->hmac = NULL;
                goto fail;
            }
        } else if (gnutls_hash_init(&b->hash, builtin_digest(ses->mac)) < 0) {
            b->hash = NULL;
            goto fail;
        }
    }
    return VCD_S_OK;

fail:
    builtin_session_fini(ses);
    return VCD_S_ENGINE;
}

/* Output the digest (to a scratch buffer to only restart); GnuTLS restarts. */
static void builtin_mac_output(BuiltinSession *b, uint8_t *out)
{
    uint8_t scratch[VCD_MAX_DIGEST_LEN];

    if (b->hmac) {
        gnutls_hmac_output(b->hmac, out ? out : scratch);
    } else {
        gnutls_hash_output(b->hash, out ? out : scratch);
    }
    explicit_bzero(scratch, sizeof(scratch));
}

static uint32_t builtin_mac_add(BuiltinSession *b, const uint8_t *data,
                                size_t len)
{
    int ret;

    if (!len) {
        return VCD_S_OK;
    }
    ret = b->hmac ? gnutls_hmac(b->hmac, data, len) :
                    gnutls_hash(b->hash, data, len);
    return ret < 0 ? VCD_S_ENGINE : VCD_S_OK;
}

/* Big-endian increment of the 128-bit counter block, as Linux's ctr(aes). */
static void builtin_ctr_inc(uint8_t *ctr)
{
    int i;

    for (i = VCD_BLOCK_LEN - 1; i >= 0; i--) {
        if (++ctr[i]) {
            break;
        }
    }
}

static uint32_t builtin_ctr(BuiltinSession *b, const uint8_t *src,
                            uint8_t *dst, uint32_t len)
{
    uint8_t blocks[BUILTIN_CTR_CHUNK], stream[BUILTIN_CTR_CHUNK];
    uint32_t done = 0, n, i;

    while (done < len) {
        n = MIN(len - done, BUILTIN_CTR_CHUNK);
        for (i = 0; i < n; i += VCD_BLOCK_LEN) {
            memcpy(blocks + i, b->iv, VCD_BLOCK_LEN);
            builtin_ctr_inc(b->iv);
        }
        if (qcrypto_cipher_encrypt(b->cipher, blocks, stream,
                                   ROUND_UP(n, VCD_BLOCK_LEN), NULL) < 0) {
            return VCD_S_ENGINE;
        }
        for (i = 0; i < n; i++) {
            dst[done + i] = src[done + i] ^ stream[i];
        }
        done += n;
    }
    explicit_bzero(stream, sizeof(stream));
    return VCD_S_OK;
}

static uint32_t builtin_cipher(BuiltinSession *b, VcdCryptOp *op)
{
    uint32_t ivlen = b->calg->ivlen;
    uint8_t next[VCD_IV_LEN];

    if (b->calg->alg == VCD_CIPHER_AES_CTR) {
        return builtin_ctr(b, op->src, op->dst, op->len);
    }
    if (ivlen && qcrypto_cipher_setiv(b->cipher, b->iv, ivlen, NULL) < 0) {
        return VCD_S_ENGINE;
    }
    /* CBC chains from the last ciphertext block, which decryption reads. */
    if (ivlen && b->calg->alg != VCD_CIPHER_AES_XTS && !op->encrypt) {
        memcpy(next, op->src + op->len - ivlen, ivlen);
    }
    if ((op->encrypt ? qcrypto_cipher_encrypt : qcrypto_cipher_decrypt)
        (b->cipher, op->src, op->dst, op->len, NULL) < 0) {
        return VCD_S_ENGINE;
    }
    if (ivlen && b->calg->alg != VCD_CIPHER_AES_XTS) {
        memcpy(b->iv, op->encrypt ? op->dst + op->len - ivlen : next, ivlen);
    }
    return VCD_S_OK;
}

static uint32_t builtin_crypt(VcdSession *ses, VcdCryptOp *op)
{
    BuiltinSession *b = ses->priv;
    bool mac = b->hash || b->hmac;
    uint32_t st;

    if (b->cipher && op->iv) {
        memcpy(b->iv, op->iv, b->calg->ivlen);
    }
    if (mac && op->hash_reset) {
        builtin_mac_output(b, NULL);
    }
    /* cryptodev-linux: the MAC always covers the plaintext. */
    if (mac && (op->encrypt || !b->cipher)) {
        st = builtin_mac_add(b, op->src, op->len);
        if (st != VCD_S_OK) {
            return st;
        }
    }
    if (b->cipher && op->len) {
        st = builtin_cipher(b, op);
        if (st != VCD_S_OK) {
            return st;
        }
    }
    if (mac && b->cipher && !op->encrypt) {
        st = builtin_mac_add(b, op->dst, op->len);
        if (st != VCD_S_OK) {
            return st;
        }
    }
    if (mac && op->mac) {
        builtin_mac_output(b, op->mac);
    }
    if (b->cipher && op->iv_out) {
        memcpy(op->iv_out, b->iv, b->calg->ivlen);
    }
    return VCD_S_OK;
}

static uint32_t builtin_aead(VcdSession *ses, VcdAeadOp *op)
{
    BuiltinSession *b = ses->priv;
    const void *aad = op->aad_len ? op->aad : builtin_empty;
    const void *src = op->len ? op->src : builtin_empty;
    size_t out_len = op->encrypt ? op->len + op->tag_len
                                 : op->len - op->tag_len;
    uint8_t *dst = op->dst;
    uint8_t scratch[1];
    int ret;

    if (!out_len) {
        dst = scratch;  /* GnuTLS wants room even for nothing */
    }
    if (op->encrypt) {
        ret = gnutls_aead_cipher_encrypt(b->aead, op->iv, VCD_GCM_IV_LEN, aad,
                                         op->aad_len, op->tag_len, src,
                                         op->len, dst, &out_len);
    } else {
        ret = gnutls_aead_cipher_decrypt(b->aead, op->iv, VCD_GCM_IV_LEN, aad,
                                         op->aad_len, op->tag_len, src,
                                         op->len, dst, &out_len);
        if (ret == GNUTLS_E_DECRYPTION_FAILED) {
            return VCD_S_BADTAG;
        }
    }
    return ret < 0 ? VCD_S_ENGINE : VCD_S_OK;
}

static uint32_t builtin_hash_copy(VcdSession *dst, VcdSession *src)
{
    BuiltinSession *d = dst->priv, *s = src->priv;

    if (s->hmac) {
        gnutls_hmac_hd_t copy = gnutls_hmac_copy(s->hmac);

        if (!copy) {
            return VCD_S_ENGINE;
        }
        gnutls_hmac_deinit(d->hmac, NULL);
        d->hmac = copy;
    } else {
        gnutls_hash_hd_t copy = gnutls_hash_copy(s->hash);

        if (!copy) {
            return VCD_S_ENGINE;
        }
        gnutls_hash_deinit(d->hash, NULL);
        d->hash = copy;
    }
    return VCD_S_OK;
}

static void builtin_session_info(VcdSession *ses,
                                 struct vcd_session_info *info)
{
    BuiltinSession *b = ses->priv;

    if (b->calg) {
        pstrcpy(info->cipher_name, VCD_NAME_LEN, b->calg->name);
        pstrcpy(info->cipher_driver, VCD_NAME_LEN, "qcrypto-builtin");
    }
    if (b->malg) {
        pstrcpy(info->mac_name, VCD_NAME_LEN, b->malg->name);
        pstrcpy(info->mac_driver, VCD_NAME_LEN, "gnutls");
    }
}

const VcdEngine vcd_engine_builtin = {
    .name = "builtin",
    .usable = builtin_usable,
    .supports = builtin_supports,
    .session_init = builtin_session_init,
    .session_fini = builtin_session_fini,
    .crypt = builtin_crypt,
    .aead = builtin_aead,
    .hash_copy = builtin_hash_copy,
    .session_info = builtin_session_info,
};
