/*
 * virtio-cryptodev builtin engine: QEMU's own crypto layer (GnuTLS here)
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */

#include "qemu/osdep.h"
#include "qapi/error.h"
#include "qemu/cutils.h"
#include "crypto/cipher.h"
#include "crypto/hmac.h"
#include "virtio-cryptodev-engine.h"

typedef struct BuiltinSession {
    QCryptoCipher *cipher;
    QCryptoHmac *hmac;
} BuiltinSession;

/* An empty key or message is valid; the library wants a non-NULL pointer. */
static const uint8_t builtin_empty[1];

static bool builtin_usable(Error **errp)
{
    if (!qcrypto_cipher_supports(QCRYPTO_CIPHER_ALG_AES_256,
                                 QCRYPTO_CIPHER_MODE_CBC) ||
        !qcrypto_hmac_supports(QCRYPTO_HASH_ALG_SHA256)) {
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
    qcrypto_hmac_free(b->hmac);
    g_free(b);
    ses->priv = NULL;
}

static uint32_t builtin_session_init(VcdSession *ses, const uint8_t *key,
                                     uint32_t keylen, const uint8_t *mackey,
                                     uint32_t mackeylen)
{
    BuiltinSession *b = g_try_new0(BuiltinSession, 1);
    QCryptoCipherAlgorithm alg;

    if (!b) {
        return VCD_S_NOMEM;
    }
    ses->priv = b;
    if (ses->cipher == VCD_CIPHER_AES_CBC) {
        alg = keylen == 16 ? QCRYPTO_CIPHER_ALG_AES_128 :
              keylen == 24 ? QCRYPTO_CIPHER_ALG_AES_192 :
                             QCRYPTO_CIPHER_ALG_AES_256;
        b->cipher = qcrypto_cipher_new(alg, QCRYPTO_CIPHER_MODE_CBC,
                                       key, keylen, NULL);
        if (!b->cipher) {
            goto fail;
        }
    }
    if (ses->mac == VCD_MAC_SHA256_HMAC) {
        b->hmac = qcrypto_hmac_new(QCRYPTO_HASH_ALG_SHA256,
                                   mackeylen ? mackey : builtin_empty,
                                   mackeylen, NULL);
        if (!b->hmac) {
            goto fail;
        }
    }
    return VCD_S_OK;

fail:
    builtin_session_fini(ses);
    return VCD_S_ENGINE;
}

static uint32_t builtin_hmac(BuiltinSession *b, const uint8_t *data,
                             size_t len, uint8_t *out)
{
    uint8_t *result = out;
    size_t resultlen = VCD_HMAC_SHA256_LEN;

    if (qcrypto_hmac_bytes(b->hmac, (const char *)(len ? data : builtin_empty),
                           len, &result, &resultlen, NULL) < 0 ||
        resultlen != VCD_HMAC_SHA256_LEN) {
        return VCD_S_ENGINE;
    }
    return VCD_S_OK;
}

static uint32_t builtin_crypt(VcdSession *ses, VcdCryptOp *op)
{
    BuiltinSession *b = ses->priv;

    /* cryptodev-linux: the MAC always covers the plaintext. */
    if (b->hmac && (op->encrypt || !b->cipher) &&
        builtin_hmac(b, op->src, op->len, op->mac) != VCD_S_OK) {
        return VCD_S_ENGINE;
    }
    if (b->cipher && op->len) {
        if (qcrypto_cipher_setiv(b->cipher, op->iv, VCD_IV_LEN, NULL) < 0) {
            return VCD_S_ENGINE;
        }
        if ((op->encrypt ? qcrypto_cipher_encrypt : qcrypto_cipher_decrypt)
            (b->cipher, op->src, op->dst, op->len, NULL) < 0) {
            return VCD_S_ENGINE;
        }
    }
    if (b->hmac && b->cipher && !op->encrypt &&
        builtin_hmac(b, op->dst, op->len, op->mac) != VCD_S_OK) {
        return VCD_S_ENGINE;
    }
    return VCD_S_OK;
}

static void builtin_session_info(VcdSession *ses,
                                 struct vcd_session_info *info)
{
    if (ses->cipher) {
        pstrcpy(info->cipher_name, VCD_NAME_LEN, "cbc(aes)");
        pstrcpy(info->cipher_driver, VCD_NAME_LEN, "qcrypto-builtin");
    }
    if (ses->mac) {
        pstrcpy(info->mac_name, VCD_NAME_LEN, "hmac(sha256)");
        pstrcpy(info->mac_driver, VCD_NAME_LEN, "qcrypto-builtin");
    }
}

const VcdEngine vcd_engine_builtin = {
    .name = "builtin",
    .usable = builtin_usable,
    .session_init = builtin_session_init,
    .session_fini = builtin_session_fini,
    .crypt = builtin_crypt,
    .session_info = builtin_session_info,
};
