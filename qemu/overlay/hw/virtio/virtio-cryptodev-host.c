/*
 * virtio-cryptodev host engine: the host's cryptodev-linux /dev/crypto
 *
 * One host fd per guest session, never shown to the guest.  The guest's
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

/* cryptodev-linux's ABI, declared here because its header is rarely installed. */
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

typedef struct HostSession {
    int fd;
    uint32_t ses;
} HostSession;

bool vcd_host_crypto_present(void)
{
    return access("/dev/crypto", R_OK | W_OK) == 0;
}

static bool host_usable(Error **errp)
{
    if (!vcd_host_crypto_present()) {
        error_setg(errp, "virtio-cryptodev: engine=host needs a usable "
                   "/dev/crypto (cryptodev-linux)");
        return false;
    }
    return true;
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
    int fd = qemu_open_old("/dev/crypto", O_RDWR | O_CLOEXEC);

    if (fd < 0) {
        return errno == EMFILE || errno == ENFILE ? VCD_S_LIMIT : VCD_S_ENGINE;
    }
    if (ioctl(fd, VCD_HOST_CIOCGSESSION, &sop) < 0) {
        uint32_t st = errno == EINVAL ? VCD_S_INVAL :
                      errno == ENOMEM ? VCD_S_NOMEM : VCD_S_ENGINE;
        qemu_close(fd);
        return st;
    }
    h = g_new0(HostSession, 1);
    h->fd = fd;
    h->ses = sop.ses;
    ses->priv = h;
    return VCD_S_OK;
}

static void host_session_fini(VcdSession *ses)
{
    HostSession *h = ses->priv;

    ioctl(h->fd, VCD_HOST_CIOCFSESSION, &h->ses);
    qemu_close(h->fd);
    g_free(h);
    ses->priv = NULL;
}

static uint32_t host_crypt(VcdSession *ses, VcdCryptOp *op)
{
    HostSession *h = ses->priv;
    struct vcd_host_crypt_op cop = {
        .ses = h->ses,
        .op = op->encrypt ? VCD_OP_ENCRYPT : VCD_OP_DECRYPT,
        .len = op->len,
        .src = op->src,
        .dst = op->dst,
        .mac = op->mac,
        .iv = op->iv,
    };

    if (ioctl(h->fd, VCD_HOST_CIOCCRYPT, &cop) < 0) {
        return errno == EINVAL ? VCD_S_INVAL : VCD_S_ENGINE;
    }
    return VCD_S_OK;
}

static void host_session_info(VcdSession *ses, struct vcd_session_info *info)
{
    HostSession *h = ses->priv;
    struct vcd_host_session_info_op sio = { .ses = h->ses };

    if (ioctl(h->fd, VCD_HOST_CIOCGSESSINFO, &sio) < 0) {
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
    .session_init = host_session_init,
    .session_fini = host_session_fini,
    .crypt = host_crypt,
    .session_info = host_session_info,
};
