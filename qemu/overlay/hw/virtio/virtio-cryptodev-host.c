/*
 * virtio-cryptodev host engine: the host's cryptodev-linux /dev/crypto
 *
 * One host fd for the whole process, opened on first use and kept: every
 * session of every device lives on it, so the host holds one fd however many
 * sessions guests open (their number is the request path's budget), and
 * CIOCCPHASH works between any two sessions.  The fd is never shown to the
 * guest.  The guest's
 * request was decoded from the fixed wire format first: guest struct layouts
 * and CIOC* numbers never reach the host kernel.
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */

#include "qemu/osdep.h"
#include "qapi/error.h"
#include "qemu/bswap.h"
#include "qemu/cutils.h"
#include "virtio-cryptodev-engine.h"
#include <sys/ioctl.h>

/* cryptodev-linux's ABI, declared here: its header is rarely installed. */
struct vcd_host_session_op {
    uint32_t cipher;
    uint32_t mac;
    uint32_t keylen;
    const uint8_t *key;
    uint32_t mackeylen;
    const uint8_t *mackey;
    uint32_t ses;
};

struct vcd_host_crypt_op {
    uint32_t ses;
    uint16_t op;
    uint16_t flags;
    uint32_t len;
    const uint8_t *src;
    uint8_t *dst;
    uint8_t *mac;
    const uint8_t *iv;
};

struct vcd_host_alg_info {
    char cra_name[64];
    char cra_driver_name[64];
};

struct vcd_host_session_info_op {
    uint32_t ses;
    struct vcd_host_alg_info cipher_info;
    struct vcd_host_alg_info hash_info;
    uint16_t alignmask;
    uint32_t flags;
};

#define VCD_HOST_CIOCGSESSION  _IOWR('c', 102, struct vcd_host_session_op)
#define VCD_HOST_CIOCFSESSION  _IOW('c', 103, uint32_t)
#define VCD_HOST_CIOCCRYPT     _IOWR('c', 104, struct vcd_host_crypt_op)
#define VCD_HOST_CIOCGSESSINFO _IOWR('c', 107, struct vcd_host_session_info_op)

struct vcd_host_cphash_op {
    uint32_t dst_ses;
    uint32_t src_ses;
};

#define VCD_HOST_CIOCCPHASH    _IOW('c', 112, struct vcd_host_cphash_op)

struct vcd_host_crypt_auth_op {
    uint32_t ses;
    uint16_t op;
    uint16_t flags;
    uint32_t len;
    uint32_t auth_len;
    const uint8_t *auth_src;
    const uint8_t *src;
    uint8_t *dst;
    uint8_t *tag;
    uint32_t tag_len;
    const uint8_t *iv;
    uint32_t iv_len;
};

#define VCD_HOST_CIOCAUTHCRYPT _IOWR('c', 109, struct vcd_host_crypt_auth_op)

/* cryptodev-linux's COP_FLAG_* */
#define VCD_HOST_FLAG_UPDATE   (1 << 0)
#define VCD_HOST_FLAG_FINAL    (1 << 1)
#define VCD_HOST_FLAG_WRITE_IV (1 << 2)
#define VCD_HOST_FLAG_RESET    (1 << 6)

typedef struct HostSession {
    uint32_t ses;
    /*
     * The next operation must restart the hash (after a FINAL, or a RESET
     * that came without data).
     */
    bool restart;
} HostSession;

/* Main loop only (realize, session create and destroy). */
static int host_crypto_fd = -1;

static int host_fd(void)
{
    if (host_crypto_fd < 0) {
        host_crypto_fd = qemu_open_old("/dev/crypto", O_RDWR | O_CLOEXEC);
    }
    return host_crypto_fd;
}

bool vcd_host_crypto_present(void)
{
    return access("/dev/crypto", R_OK | W_OK) == 0;
}

static bool host_usable(Error **errp)
{
    if (host_fd() < 0) {
        error_setg(errp, "virtio-cryptodev: engine=host needs a usable "
                   "/dev/crypto (cryptodev-linux)");
        return false;
    }
    return true;
}

/*
 * Whether the host's /dev/crypto has @alg: asked once per algorithm with a
 * throw-away session (all-zero key of the first valid size).
 */
static bool host_supports(uint32_t alg)
{
    const VcdAlgInfo *info = vcd_alg_info(alg);
    static const uint8_t zero[VCD_MAX_KEY_LEN];
    struct vcd_host_session_op sop = { 0 };
    int fd = host_fd();
    bool ok;

    if (!info || fd < 0) {
        return false;
    }
    if (info->is_cipher) {
        sop.cipher = alg;
        sop.keylen = info->keylens[0];
        sop.key = zero;
    } else {
        sop.mac = alg;
        sop.mackeylen = info->keyed ? 16 : 0;
        sop.mackey = zero;
    }
    ok = ioctl(fd, VCD_HOST_CIOCGSESSION, &sop) == 0;
    if (ok) {
        ioctl(fd, VCD_HOST_CIOCFSESSION, &sop.ses);
    }
    return ok;
}

static uint32_t host_session_init(VcdSession *ses, const uint8_t *key,
                                  uint32_t keylen, const uint8_t *mackey,
                                  uint32_t mackeylen)
{
    struct vcd_host_session_op sop = {
        .cipher = ses->cipher,
        .mac = ses->mac,
        .keylen = keylen,
        .key = key,
        .mackeylen = mackeylen,
        .mackey = mackey,
    };
    HostSession *h;

    if (ioctl(host_fd(), VCD_HOST_CIOCGSESSION, &sop) < 0) {
        return errno == EINVAL ? VCD_S_INVAL :
               errno == ENOMEM ? VCD_S_NOMEM : VCD_S_ENGINE;
    }
    h = g_new0(HostSession, 1);
    h->ses = sop.ses;
    ses->priv = h;
    return VCD_S_OK;
}

static void host_session_fini(VcdSession *ses)
{
    HostSession *h = ses->priv;

    ioctl(host_crypto_fd, VCD_HOST_CIOCFSESSION, &h->ses);
    g_free(h);
    ses->priv = NULL;
}

static uint32_t host_crypt(VcdSession *ses, VcdCryptOp *op)
{
    HostSession *h = ses->priv;
    uint8_t iv[VCD_IV_LEN];
    struct vcd_host_crypt_op cop = {
        .ses = h->ses,
        .op = op->encrypt ? VCD_OP_ENCRYPT : VCD_OP_DECRYPT,
        .len = op->len,
        .src = op->src,
        .dst = op->dst,
        .mac = op->mac,
    };

    /*
     * cryptodev-linux keeps the chained IV itself (a NULL iv continues it)
     * and writes the IV back only into a caller's IV buffer.
     */
    if (op->iv_out) {
        if (!op->iv) {
            return VCD_S_NOTSUPP;
        }
        memcpy(iv, op->iv, sizeof(iv));
        cop.iv = iv;
        cop.flags |= VCD_HOST_FLAG_WRITE_IV;
    } else {
        cop.iv = op->iv;
    }
    if (ses->mac) {
        /*
         * cryptodev-linux's rule: RESET (or no flags) restarts; FINAL, no
         * UPDATE, or len 0 outputs.  Its state after an output is not a
         * fresh one, so the next operation restarts explicitly.
         */
        bool reset = op->hash_reset || h->restart;

        if (!op->mac) {
            if (!op->len) {
                h->restart = reset; /* an empty update would end the hash */
                return VCD_S_OK;
            }
            cop.flags |= VCD_HOST_FLAG_UPDATE;
        } else if (!reset) {
            cop.flags |= VCD_HOST_FLAG_FINAL;
        }
        if (reset) {
            cop.flags |= VCD_HOST_FLAG_RESET;
        }
    }
    if (ioctl(host_crypto_fd, VCD_HOST_CIOCCRYPT, &cop) < 0) {
        return errno == EINVAL ? VCD_S_INVAL : VCD_S_ENGINE;
    }
    h->restart = op->mac != NULL;
    if (op->iv_out) {
        memcpy(op->iv_out, iv, vcd_alg_info(ses->cipher)->ivlen);
    }
    return VCD_S_OK;
}

/*
 * AES-GCM through CIOCAUTHCRYPT, whose layout the request path already uses:
 * ciphertext then tag in dst, or both in src to decrypt.
 */
static uint32_t host_aead(VcdSession *ses, VcdAeadOp *op)
{
    HostSession *h = ses->priv;
    struct vcd_host_crypt_auth_op caop = {
        .ses = h->ses,
        .op = op->encrypt ? VCD_OP_ENCRYPT : VCD_OP_DECRYPT,
        .len = op->len,
        .auth_len = op->aad_len,
        .auth_src = op->aad,
        .src = op->src,
        .dst = op->dst,
        .tag_len = op->tag_len,
        .iv = op->iv,
        .iv_len = VCD_GCM_IV_LEN,
    };

    if (ioctl(host_crypto_fd, VCD_HOST_CIOCAUTHCRYPT, &caop) < 0) {
        return errno == EBADMSG ? VCD_S_BADTAG :
               errno == EINVAL ? VCD_S_INVAL : VCD_S_ENGINE;
    }
    return VCD_S_OK;
}

static uint32_t host_hash_copy(VcdSession *dst, VcdSession *src)
{
    HostSession *d = dst->priv, *s = src->priv;
    struct vcd_host_cphash_op cp = { .dst_ses = d->ses, .src_ses = s->ses };

    if (ioctl(host_crypto_fd, VCD_HOST_CIOCCPHASH, &cp) < 0) {
        return VCD_S_ENGINE;
    }
    d->restart = s->restart;
    return VCD_S_OK;
}

static void host_session_info(VcdSession *ses, struct vcd_session_info *info)
{
    HostSession *h = ses->priv;
    struct vcd_host_session_info_op sio = { .ses = h->ses };

    if (ioctl(host_crypto_fd, VCD_HOST_CIOCGSESSINFO, &sio) < 0) {
        return;
    }
    pstrcpy(info->cipher_name, VCD_NAME_LEN, sio.cipher_info.cra_name);
    pstrcpy(info->cipher_driver, VCD_NAME_LEN,
            sio.cipher_info.cra_driver_name);
    pstrcpy(info->mac_name, VCD_NAME_LEN, sio.hash_info.cra_name);
    pstrcpy(info->mac_driver, VCD_NAME_LEN, sio.hash_info.cra_driver_name);
    info->alignmask = cpu_to_le32(sio.alignmask);
    info->flags = cpu_to_le32(sio.flags);
}

const VcdEngine vcd_engine_host = {
    .name = "host",
    .usable = host_usable,
    .supports = host_supports,
    .session_init = host_session_init,
    .session_fini = host_session_fini,
    .crypt = host_crypt,
    .aead = host_aead,
    .hash_copy = host_hash_copy,
    .session_info = host_session_info,
};
