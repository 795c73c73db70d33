/*
 * virtio-cryptodev: a paravirtualized cryptodev-linux style crypto device
 *
 * The guest's /dev/cryptodevN calls (open, close and the CIOC* ioctls) arrive
 * as descriptor chains on one virtqueue; the layout is defined by
 * virtio_cryptodev.h, shared with the guest frontend.
 *
 * Threat model: the guest is hostile.  Every count, length, handle, session
 * id and command is checked before use; a bad request is answered with an
 * error status and never reaches an assert.  Chains are read as byte streams
 * (the virtio spec forbids relying on descriptor boundaries), so only the
 * total readable and writable sizes matter and both must match the request
 * exactly.
 *
 * Concurrency: the queue handler runs under the BQL.  It pops every available
 * element, answers the cheap calls (open, close, session create/destroy/info)
 * at once, copies the input of CRYPT requests into host memory and hands them
 * to QEMU's thread pool, so that bulk crypto runs off the vCPU and main loop
 * threads and several requests proceed in parallel.  Completions come back
 * to the main loop, which copies the results into the guest buffers, pushes
 * the element and schedules one notification per batch.  Sessions are
 * reference counted so that a session destroyed (or a handle closed) while a
 * worker uses it lives until the worker is done; a per-session mutex keeps
 * two workers off the same engine state.  Reset and unrealize wait for the
 * in-flight requests, which are bounded CPU work, then free everything.
 *
 * The crypto itself is an engine's (virtio-cryptodev-engine.h): builtin
 * (QEMU's crypto layer, virtio-cryptodev-builtin.c) or host (/dev/crypto
 * pass-through, virtio-cryptodev-host.c).  Engines see host buffers of
 * checked sizes only.
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */

#include "qemu/osdep.h"
#include "qapi/error.h"
#include "qapi/visitor.h"
#include "qemu/cutils.h"
#include "qemu/iov.h"
#include "qemu/module.h"
#include "qemu/main-loop.h"
#include "qemu/thread.h"
#include "qemu/timer.h"
#include "qemu/error-report.h"
#include "block/aio.h"
#include "block/aio-wait.h"
#include "block/thread-pool.h"
#include "hw/qdev-properties.h"
#include "hw/virtio/virtio.h"
#include "hw/virtio/virtio-cryptodev.h"
#include "migration/vmstate.h"
#include "standard-headers/linux/virtio_config.h"
#include "trace.h"
#include "virtio-cryptodev-engine.h"

QEMU_BUILD_BUG_ON(sizeof(struct vcd_req) != 48);
QEMU_BUILD_BUG_ON(sizeof(struct vcd_resp) != 16);
QEMU_BUILD_BUG_ON(sizeof(struct vcd_session_info) != 264);

#define VCD_HANDLE_SLOT_BITS 16
#define VCD_HANDLE_SLOT_MASK ((1u << VCD_HANDLE_SLOT_BITS) - 1)

struct VcdHandle {
    uint32_t id;
    unsigned nsessions;
    VcdSession *sessions[VCD_MAX_SESSIONS];
    VcdUseStats use;
};

/* One popped element; VirtQueueElement must stay first for virtqueue_pop(). */
typedef struct VcdRequest {
    VirtQueueElement elem;
    VirtIOCryptodev *vcd;
    VcdSession *ses;
    uint64_t seq;
    struct vcd_req req;     /* host-endian copy */
    size_t in_size;
    uint8_t iv[VCD_IV_LEN];
    uint8_t *src;
    uint8_t *dst;
    uint8_t mac[VCD_HMAC_SHA256_LEN];
    uint32_t status;
} VcdRequest;

/* ------------------------------------------------------------------ */
/* handles and sessions                                                */

static VcdHandle *vcd_handle_lookup(VirtIOCryptodev *vcd, uint32_t id)
{
    uint32_t slot = (id & VCD_HANDLE_SLOT_MASK) - 1;

    if ((id & VCD_HANDLE_SLOT_MASK) == 0 || slot >= VCD_MAX_HANDLES) {
        return NULL;
    }
    if (!vcd->handles[slot] || vcd->handles[slot]->id != id) {
        return NULL;
    }
    return vcd->handles[slot];
}

static void vcd_session_unref(VirtIOCryptodev *vcd, VcdSession *ses)
{
    assert(ses->refs > 0);
    if (--ses->refs) {
        return;
    }
    if (ses->priv) {
        vcd->engine->session_fini(ses);
    }
    qemu_mutex_destroy(&ses->lock);
    g_free(ses);
}

static int vcd_session_index(VcdHandle *h, uint32_t id)
{
    int i;

    for (i = 0; i < VCD_MAX_SESSIONS; i++) {
        if (h->sessions[i] && h->sessions[i]->id == id) {
            return i;
        }
    }
    return -1;
}

static void vcd_handle_free(VirtIOCryptodev *vcd, uint32_t slot)
{
    VcdHandle *h = vcd->handles[slot];
    int i;

    for (i = 0; i < VCD_MAX_SESSIONS; i++) {
        if (h->sessions[i]) {
            vcd_session_unref(vcd, h->sessions[i]);
        }
    }
    g_free(h);
    vcd->handles[slot] = NULL;
    vcd->nhandles--;
}

static void vcd_free_all(VirtIOCryptodev *vcd)
{
    uint32_t slot;

    for (slot = 0; slot < VCD_MAX_HANDLES; slot++) {
        if (vcd->handles[slot]) {
            vcd_handle_free(vcd, slot);
        }
    }
}

/* ------------------------------------------------------------------ */
/* request handling                                                    */

static void vcd_finish(VirtIOCryptodev *vcd, VcdRequest *r,
                       struct vcd_resp *resp)
{
    unsigned used = 0;

    uint32_t status = le32_to_cpu(resp->status);
    VcdHandle *h = vcd_handle_lookup(vcd, r->req.handle);
    uint32_t len = r->req.type == VCD_CALL_IOCTL &&
                   r->req.cmd == VCD_CMD_CRYPT ? r->req.len : 0;

    trace_virtio_cryptodev_response(vcd, r->seq, r->req.type, r->req.cmd,
                                    r->req.handle, r->req.session, status,
                                    le32_to_cpu(resp->handle),
                                    le32_to_cpu(resp->session));
    vcd_stats_answered(&vcd->stats, r->req.type, r->req.cmd, len, status);
    if (h) {
        vcd_use_stats_add(&h->use, len, status);
    }
    if (r->ses) {
        vcd_use_stats_add(&r->ses->use, len, status);
    }
    /* Without room for a response the guest can only see a zero length. */
    if (r->in_size >= sizeof(*resp)) {
        iov_from_buf(r->elem.in_sg, r->elem.in_num,
                     r->in_size - sizeof(*resp), resp, sizeof(*resp));
        used = r->in_size;
    }
    virtqueue_push(vcd->vq, &r->elem, used);
}

static void vcd_free_request(VirtIOCryptodev *vcd, VcdRequest *r)
{
    if (r->ses) {
        vcd_session_unref(vcd, r->ses);
    }
    g_free(r->src);
    g_free(r->dst);
    memset(r->iv, 0, sizeof(r->iv));
    g_free(r);
}

static int vcd_crypt_worker(void *opaque)
{
    VcdRequest *r = opaque;
    VcdSession *ses = r->ses;

    VcdCryptOp op = {
        .encrypt = r->req.op == VCD_OP_ENCRYPT,
        .len = r->req.len,
        .iv = ses->cipher ? r->iv : NULL,
        .src = r->src,
        .dst = ses->cipher ? r->dst : NULL,
        .mac = ses->mac ? r->mac : NULL,
    };

    qemu_mutex_lock(&ses->lock);
    r->status = r->vcd->engine->crypt(ses, &op);
    qemu_mutex_unlock(&ses->lock);
    return 0;
}

/* Write a finished crypt's results to the guest, answer it and free it. */
static void vcd_crypt_complete(VirtIOCryptodev *vcd, VcdRequest *r)
{
    struct vcd_resp resp = { .status = cpu_to_le32(r->status) };
    size_t off = 0;

    if (r->status == VCD_S_OK) {
        if (r->ses->cipher && r->req.len) {
            off += iov_from_buf(r->elem.in_sg, r->elem.in_num, 0,
                                r->dst, r->req.len);
        }
        if (r->ses->mac) {
            iov_from_buf(r->elem.in_sg, r->elem.in_num, off,
                         r->mac, sizeof(r->mac));
        }
    }
    resp.session = cpu_to_le32(r->req.session);
    vcd_finish(vcd, r, &resp);
    vcd_free_request(vcd, r);
}

static void vcd_crypt_done(void *opaque, int ret)
{
    VcdRequest *r = opaque;
    VirtIOCryptodev *vcd = r->vcd;

    vcd_crypt_complete(vcd, r);
    vcd->inflight--;
    qemu_bh_schedule(vcd->notify_bh);
    aio_wait_kick();
}

static void vcd_notify_bh(void *opaque)
{
    VirtIOCryptodev *vcd = opaque;

    virtio_notify(VIRTIO_DEVICE(vcd), vcd->vq);
}

/* Every field a call does not use must be zero. */
static bool vcd_unused_zero(const struct vcd_req *q, bool session,
                            bool create, bool crypt)
{
    if (!session && q->session) {
        return false;
    }
    if (!create && (q->cipher || q->mac || q->keylen || q->mackeylen)) {
        return false;
    }
    if (!crypt && (q->op || q->flags || q->len || q->ivlen)) {
        return false;
    }
    return true;
}

static uint32_t vcd_open(VirtIOCryptodev *vcd, VcdRequest *r,
                         struct vcd_resp *resp)
{
    uint32_t slot;
    VcdHandle *h;

    if (vcd->nhandles >= VCD_MAX_HANDLES) {
        return VCD_S_LIMIT;
    }
    for (slot = 0; slot < VCD_MAX_HANDLES; slot++) {
        if (!vcd->handles[slot]) {
            break;
        }
    }
    h = g_try_new0(VcdHandle, 1);
    if (!h) {
        return VCD_S_NOMEM;
    }
    /* A generation in the high bits makes a stale handle fail to match. */
    vcd->handle_gen[slot] = (vcd->handle_gen[slot] + 1) & 0x7fff;
    h->id = ((uint32_t)vcd->handle_gen[slot] << VCD_HANDLE_SLOT_BITS) |
            (slot + 1);
    vcd_use_stats_init(&h->use);
    vcd->handles[slot] = h;
    vcd->nhandles++;
    resp->handle = cpu_to_le32(h->id);
    return VCD_S_OK;
}

static uint32_t vcd_session_create(VirtIOCryptodev *vcd, VcdHandle *h,
                                   VcdRequest *r, struct vcd_resp *resp)
{
    const struct vcd_req *q = &r->req;
    uint8_t key[VCD_MAX_KEY_LEN];
    uint8_t *mackey = NULL;
    VcdSession *ses;
    uint32_t st;
    int i, slot = -1;

    if (q->cipher != VCD_CIPHER_NONE && q->cipher != VCD_CIPHER_AES_CBC) {
        return VCD_S_NOTSUPP;
    }
    if (q->mac != VCD_MAC_NONE && q->mac != VCD_MAC_SHA256_HMAC) {
        return VCD_S_NOTSUPP;
    }
    if (q->cipher == VCD_CIPHER_NONE && q->mac == VCD_MAC_NONE) {
        return VCD_S_INVAL;
    }
    if (q->cipher == VCD_CIPHER_AES_CBC ?
        (q->keylen != 16 && q->keylen != 24 && q->keylen != 32) :
        q->keylen != 0) {
        return VCD_S_INVAL;
    }
    if (q->mac == VCD_MAC_NONE ? q->mackeylen != 0 :
        q->mackeylen > VCD_MAX_MAC_KEY_LEN) {
        return VCD_S_INVAL;
    }
    if (iov_size(r->elem.out_sg, r->elem.out_num) !=
        sizeof(struct vcd_req) + (uint64_t)q->keylen + q->mackeylen ||
        r->in_size != sizeof(*resp)) {
        return VCD_S_BADMSG;
    }
    if (h->nsessions >= VCD_MAX_SESSIONS) {
        return VCD_S_LIMIT;
    }
    for (i = 0; i < VCD_MAX_SESSIONS; i++) {
        if (!h->sessions[i]) {
            slot = i;
            break;
        }
    }
    ses = g_try_new0(VcdSession, 1);
    if (!ses) {
        return VCD_S_NOMEM;
    }
    vcd_use_stats_init(&ses->use);
    /* Unguessable, unique within the handle, never 0. */
    do {
        ses->id = g_random_int();
    } while (!ses->id || vcd_session_index(h, ses->id) >= 0);
    ses->cipher = q->cipher;
    ses->mac = q->mac;
    ses->refs = 1;
    qemu_mutex_init(&ses->lock);

    iov_to_buf(r->elem.out_sg, r->elem.out_num, sizeof(struct vcd_req),
               key, q->keylen);
    if (q->mackeylen) {
        mackey = g_malloc(q->mackeylen);
        iov_to_buf(r->elem.out_sg, r->elem.out_num,
                   sizeof(struct vcd_req) + q->keylen, mackey, q->mackeylen);
    }
    st = vcd->engine->session_init(ses, key, q->keylen, mackey, q->mackeylen);
    /* Keys live on only inside the engine. */
    explicit_bzero(key, sizeof(key));
    if (mackey) {
        explicit_bzero(mackey, q->mackeylen);
        g_free(mackey);
    }
    if (st != VCD_S_OK) {
        vcd_session_unref(vcd, ses);
        return st;
    }
    h->sessions[slot] = ses;
    h->nsessions++;
    resp->session = cpu_to_le32(ses->id);
    return VCD_S_OK;
}

typedef enum {
    VCD_CRYPT_REFUSED,  /* *st says why; the caller answers */
    VCD_CRYPT_ANSWERED, /* done inline and pushed */
    VCD_CRYPT_QUEUED,   /* a worker owns it and will answer */
} VcdCryptFate;

static VcdCryptFate vcd_crypt_submit(VirtIOCryptodev *vcd, VcdSession *ses,
                                     VcdRequest *r, uint32_t *st)
{
    const struct vcd_req *q = &r->req;
    uint64_t want_out, want_in;

    if (q->op != VCD_OP_ENCRYPT && q->op != VCD_OP_DECRYPT) {
        *st = VCD_S_INVAL;
        return VCD_CRYPT_REFUSED;
    }
    if (q->flags || q->len > VCD_MAX_DATA_LEN) {
        *st = VCD_S_INVAL;
        return VCD_CRYPT_REFUSED;
    }
    if (ses->cipher && (q->len % VCD_BLOCK_LEN || q->ivlen != VCD_IV_LEN)) {
        *st = VCD_S_INVAL;
        return VCD_CRYPT_REFUSED;
    }
    if (!ses->cipher && q->ivlen) {
        *st = VCD_S_INVAL;
        return VCD_CRYPT_REFUSED;
    }
    want_out = sizeof(struct vcd_req) + (uint64_t)q->ivlen + q->len;
    want_in = sizeof(struct vcd_resp) + (ses->cipher ? (uint64_t)q->len : 0) +
              (ses->mac ? VCD_HMAC_SHA256_LEN : 0);
    if (iov_size(r->elem.out_sg, r->elem.out_num) != want_out ||
        r->in_size != want_in) {
        *st = VCD_S_BADMSG;
        return VCD_CRYPT_REFUSED;
    }
    r->src = g_try_malloc(q->len ? q->len : 1);
    if (ses->cipher) {
        r->dst = g_try_malloc(q->len ? q->len : 1);
    }
    if (!r->src || (ses->cipher && !r->dst)) {
        *st = VCD_S_NOMEM;
        return VCD_CRYPT_REFUSED;
    }
    iov_to_buf(r->elem.out_sg, r->elem.out_num, sizeof(struct vcd_req),
               r->iv, q->ivlen);
    iov_to_buf(r->elem.out_sg, r->elem.out_num,
               sizeof(struct vcd_req) + q->ivlen, r->src, q->len);
    ses->refs++;
    r->ses = ses;
    if (q->len <= vcd->inline_max) {
        /*
         * Short work is answered in this batch: handing it to a worker and back
         * costs more than the crypto itself (tens of microseconds at most here).
         */
        vcd_crypt_worker(r);
        vcd_crypt_complete(vcd, r);
        return VCD_CRYPT_ANSWERED;
    }
    vcd->inflight++;
    vcd->stats.worker++;
    thread_pool_submit_aio(aio_get_thread_pool(qemu_get_aio_context()),
                           vcd_crypt_worker, r, vcd_crypt_done, r);
    return VCD_CRYPT_QUEUED;
}

/*
 * Handle one element.  Returns true when it was answered here (pushed and
 * freed), false when a worker owns it now.
 */
static bool vcd_handle_request(VirtIOCryptodev *vcd, VcdRequest *r)
{
    struct vcd_resp resp = { 0 };
    struct vcd_req wire;
    struct vcd_req *q = &r->req;
    uint64_t out_size = iov_size(r->elem.out_sg, r->elem.out_num);
    uint32_t st = VCD_S_OK;
    VcdHandle *h = NULL;
    int idx;

    r->in_size = iov_size(r->elem.in_sg, r->elem.in_num);
    r->seq = vcd->seq++;
    if (out_size < sizeof(wire) ||
        iov_to_buf(r->elem.out_sg, r->elem.out_num, 0, &wire,
                   sizeof(wire)) != sizeof(wire)) {
        memset(q, 0, sizeof(*q));
        q->type = UINT32_MAX;
        trace_virtio_cryptodev_request(vcd, r->seq, q->type, 0, 0, 0, 0, 0,
                                       out_size, r->in_size);
        trace_virtio_cryptodev_chain(vcd, r->seq, r->elem.out_num,
                                     r->elem.in_num, 0, 0);
        st = VCD_S_BADMSG;
        goto out;
    }
    q->type = le32_to_cpu(wire.type);
    q->handle = le32_to_cpu(wire.handle);
    q->cmd = le32_to_cpu(wire.cmd);
    q->session = le32_to_cpu(wire.session);
    q->cipher = le32_to_cpu(wire.cipher);
    q->mac = le32_to_cpu(wire.mac);
    q->keylen = le32_to_cpu(wire.keylen);
    q->mackeylen = le32_to_cpu(wire.mackeylen);
    q->op = le16_to_cpu(wire.op);
    q->flags = le16_to_cpu(wire.flags);
    q->len = le32_to_cpu(wire.len);
    q->ivlen = le32_to_cpu(wire.ivlen);
    q->reserved = le32_to_cpu(wire.reserved);
    trace_virtio_cryptodev_request(vcd, r->seq, q->type, q->cmd, q->handle,
                                   q->session, q->op, q->len, out_size,
                                   r->in_size);
    trace_virtio_cryptodev_chain(vcd, r->seq, r->elem.out_num, r->elem.in_num,
                                 q->cipher, q->mac);

    if (r->in_size < sizeof(resp)) {
        st = VCD_S_BADMSG;
        goto out;
    }
    if (q->reserved) {
        st = VCD_S_INVAL;
        goto out;
    }
    switch (q->type) {
    case VCD_CALL_OPEN:
        if (q->handle || q->cmd || !vcd_unused_zero(q, false, false, false)) {
            st = VCD_S_INVAL;
        } else if (out_size != sizeof(wire) || r->in_size != sizeof(resp)) {
            st = VCD_S_BADMSG;
        } else {
            st = vcd_open(vcd, r, &resp);
        }
        goto out;
    case VCD_CALL_CLOSE:
        if (q->cmd || !vcd_unused_zero(q, false, false, false)) {
            st = VCD_S_INVAL;
        } else if (out_size != sizeof(wire) || r->in_size != sizeof(resp)) {
            st = VCD_S_BADMSG;
        } else if (!vcd_handle_lookup(vcd, q->handle)) {
            st = VCD_S_NOHANDLE;
        } else {
            vcd_handle_free(vcd, (q->handle & VCD_HANDLE_SLOT_MASK) - 1);
        }
        goto out;
    case VCD_CALL_IOCTL:
        break;
    default:
        st = VCD_S_INVAL;
        goto out;
    }

    switch (q->cmd) {
    case VCD_CMD_SESSION_CREATE:
        h = vcd_handle_lookup(vcd, q->handle);
        if (!vcd_unused_zero(q, false, true, false)) {
            st = VCD_S_INVAL;
        } else if (!h) {
            st = VCD_S_NOHANDLE;
        } else {
            st = vcd_session_create(vcd, h, r, &resp);
        }
        goto out;
    case VCD_CMD_SESSION_DESTROY:
    case VCD_CMD_SESSION_INFO:
    case VCD_CMD_CRYPT:
        break;
    default:
        st = VCD_S_NOTSUPP;
        goto out;
    }

    if (!vcd_unused_zero(q, true, false, q->cmd == VCD_CMD_CRYPT)) {
        st = VCD_S_INVAL;
        goto out;
    }
    h = vcd_handle_lookup(vcd, q->handle);
    if (!h) {
        st = VCD_S_NOHANDLE;
        goto out;
    }
    idx = vcd_session_index(h, q->session);
    if (idx < 0) {
        st = VCD_S_NOSESSION;
        goto out;
    }
    resp.session = cpu_to_le32(q->session);
    switch (q->cmd) {
    case VCD_CMD_SESSION_DESTROY:
        if (out_size != sizeof(wire) || r->in_size != sizeof(resp)) {
            st = VCD_S_BADMSG;
            break;
        }
        vcd_session_unref(vcd, h->sessions[idx]);
        h->sessions[idx] = NULL;
        h->nsessions--;
        break;
    case VCD_CMD_SESSION_INFO: {
        struct vcd_session_info info = { 0 };

        if (out_size != sizeof(wire) ||
            r->in_size != sizeof(info) + sizeof(resp)) {
            st = VCD_S_BADMSG;
            break;
        }
        vcd->engine->session_info(h->sessions[idx], &info);
        iov_from_buf(r->elem.in_sg, r->elem.in_num, 0, &info, sizeof(info));
        break;
    }
    case VCD_CMD_CRYPT:
        switch (vcd_crypt_submit(vcd, h->sessions[idx], r, &st)) {
        case VCD_CRYPT_QUEUED:
            return false;
        case VCD_CRYPT_ANSWERED:
            return true;
        case VCD_CRYPT_REFUSED:
            break;
        }
        break;
    }

out:
    resp.status = cpu_to_le32(st);
    vcd_finish(vcd, r, &resp);
    vcd_free_request(vcd, r);
    return true;
}

static void vcd_handle_output(VirtIODevice *vdev, VirtQueue *vq)
{
    VirtIOCryptodev *vcd = VIRTIO_CRYPTODEV(vdev);
    VcdRequest *r;
    unsigned popped = 0, answered = 0;

    /* Drain the whole ring on every kick; notify once for the batch. */
    while ((r = virtqueue_pop(vq, sizeof(VcdRequest)))) {
        /* virtqueue_pop() does not zero what follows the element. */
        memset((char *)r + sizeof(r->elem), 0, sizeof(*r) - sizeof(r->elem));
        r->vcd = vcd;
        popped++;
        if (vcd_handle_request(vcd, r)) {
            answered++;
        }
    }
    trace_virtio_cryptodev_batch(vcd, popped, answered, vcd->inflight);
    if (answered) {
        virtio_notify(vdev, vq);
    }
}

/* Wait for the workers; each holds at most VCD_MAX_DATA_LEN of CPU work. */
static void vcd_drain(VirtIOCryptodev *vcd)
{
    if (vcd->inflight > 0) {
        AIO_WAIT_WHILE(NULL, vcd->inflight > 0);
    }
}

static uint64_t vcd_get_features(VirtIODevice *vdev, uint64_t f, Error **errp)
{
    return f;
}

static void vcd_reset(VirtIODevice *vdev)
{
    VirtIOCryptodev *vcd = VIRTIO_CRYPTODEV(vdev);

    trace_virtio_cryptodev_reset(vcd, vcd->inflight, vcd->nhandles);
    vcd_drain(vcd);
    vcd_free_all(vcd);
}

static void vcd_realize(DeviceState *dev, Error **errp)
{
    VirtIODevice *vdev = VIRTIO_DEVICE(dev);
    VirtIOCryptodev *vcd = VIRTIO_CRYPTODEV(dev);
    const char *want = vcd->engine_prop ? vcd->engine_prop : "auto";

    if (!strcmp(want, "host")) {
        vcd->engine = &vcd_engine_host;
    } else if (!strcmp(want, "builtin")) {
        vcd->engine = &vcd_engine_builtin;
    } else if (!strcmp(want, "auto")) {
        vcd->engine = vcd_host_crypto_present() ? &vcd_engine_host
                                                : &vcd_engine_builtin;
    } else {
        error_setg(errp, "virtio-cryptodev: engine must be auto, builtin "
                   "or host, not '%s'", want);
        return;
    }
    if (!vcd->engine->usable(errp)) {
        return;
    }

    virtio_init(vdev, VIRTIO_ID_CRYPTODEV, 0);
    vcd->vq = virtio_add_queue(vdev, VCD_QUEUE_SIZE, vcd_handle_output);
    /* Guarded: a notification must not re-enter the device's MMIO. */
    vcd->notify_bh = qemu_bh_new_guarded(vcd_notify_bh, vcd,
                                         &dev->mem_reentrancy_guard);
    trace_virtio_cryptodev_realize(vcd, vcd->engine->name);
}

static void vcd_unrealize(DeviceState *dev)
{
    VirtIODevice *vdev = VIRTIO_DEVICE(dev);
    VirtIOCryptodev *vcd = VIRTIO_CRYPTODEV(dev);

    vcd_drain(vcd);
    vcd_free_all(vcd);
    qemu_bh_delete(vcd->notify_bh);
    virtio_delete_queue(vcd->vq);
    virtio_cleanup(vdev);
}

/* Host sessions and fds cannot move to another host. */
static const VMStateDescription vmstate_virtio_cryptodev = {
    .name = "virtio-cryptodev",
    .unmigratable = 1,
};

/* QOM "stats": the counters (virtio-cryptodev-stats.h). */
static void vcd_get_stats(Object *obj, Visitor *v, const char *name,
                          void *opaque, Error **errp)
{
    VirtIOCryptodev *vcd = VIRTIO_CRYPTODEV(obj);
    unsigned slot, sessions = 0;

    for (slot = 0; slot < VCD_MAX_HANDLES; slot++) {
        sessions += vcd->handles[slot] ? vcd->handles[slot]->nsessions : 0;
    }
    vcd_stats_visit(v, name, &vcd->stats, vcd->inflight, vcd->nhandles,
                    sessions, errp);
}

static bool vcd_visit_session(Visitor *v, VcdSession *ses, int64_t now,
                              Error **errp)
{
    uint64_t id = ses->id, cipher = ses->cipher, mac = ses->mac;
    bool ok;

    if (!visit_start_struct(v, NULL, NULL, 0, errp)) {
        return false;
    }
    ok = visit_type_uint64(v, "session", &id, errp) &&
         visit_type_uint64(v, "cipher", &cipher, errp) &&
         visit_type_uint64(v, "mac", &mac, errp) &&
         vcd_use_stats_visit(v, &ses->use, now, errp) &&
         visit_check_struct(v, errp);
    visit_end_struct(v, NULL);
    return ok;
}

static bool vcd_visit_handle(Visitor *v, VcdHandle *h, int64_t now,
                             Error **errp)
{
    uint64_t id = h->id;
    bool ok;
    int i;

    if (!visit_start_struct(v, NULL, NULL, 0, errp)) {
        return false;
    }
    ok = visit_type_uint64(v, "handle", &id, errp) &&
         vcd_use_stats_visit(v, &h->use, now, errp) &&
         visit_start_list(v, "sessions", NULL, 0, errp);
    if (ok) {
        for (i = 0; ok && i < VCD_MAX_SESSIONS; i++) {
            if (h->sessions[i]) {
                ok = vcd_visit_session(v, h->sessions[i], now, errp);
            }
        }
        if (ok) {
            ok = visit_check_list(v, errp);
        }
        visit_end_list(v, NULL);
    }
    if (ok) {
        ok = visit_check_struct(v, errp);
    }
    visit_end_struct(v, NULL);
    return ok;
}

/* QOM "handles": every open handle and its sessions. */
static void vcd_get_handles(Object *obj, Visitor *v, const char *name,
                            void *opaque, Error **errp)
{
    VirtIOCryptodev *vcd = VIRTIO_CRYPTODEV(obj);
    int64_t now = qemu_clock_get_ms(QEMU_CLOCK_REALTIME);
    bool ok = true;
    unsigned slot;

    if (!visit_start_list(v, name, NULL, 0, errp)) {
        return;
    }
    for (slot = 0; ok && slot < VCD_MAX_HANDLES; slot++) {
        if (vcd->handles[slot]) {
            ok = vcd_visit_handle(v, vcd->handles[slot], now, errp);
        }
    }
    if (ok) {
        visit_check_list(v, errp);
    }
    visit_end_list(v, NULL);
}

static Property virtio_cryptodev_properties[] = {
    DEFINE_PROP_STRING("engine", VirtIOCryptodev, engine_prop),
    /* Crypt requests up to this many bytes run inline, larger ones on workers. */
    DEFINE_PROP_UINT32("inline-max", VirtIOCryptodev, inline_max, 64 * 1024),
    DEFINE_PROP_END_OF_LIST(),
};

static void virtio_cryptodev_class_init(ObjectClass *klass, void *data)
{
    DeviceClass *dc = DEVICE_CLASS(klass);
    VirtioDeviceClass *vdc = VIRTIO_DEVICE_CLASS(klass);

    device_class_set_props(dc, virtio_cryptodev_properties);
    dc->vmsd = &vmstate_virtio_cryptodev;
    set_bit(DEVICE_CATEGORY_MISC, dc->categories);
    vdc->realize = vcd_realize;
    vdc->unrealize = vcd_unrealize;
    vdc->get_features = vcd_get_features;
    vdc->reset = vcd_reset;
    object_class_property_add(klass, "stats", "VirtioCryptodevStats",
                              vcd_get_stats, NULL, NULL, NULL);
    object_class_property_add(klass, "handles", "VirtioCryptodevHandles",
                              vcd_get_handles, NULL, NULL, NULL);
}

static const TypeInfo virtio_cryptodev_info = {
    .name = TYPE_VIRTIO_CRYPTODEV,
    .parent = TYPE_VIRTIO_DEVICE,
    .instance_size = sizeof(VirtIOCryptodev),
    .class_init = virtio_cryptodev_class_init,
};

static void virtio_cryptodev_register_types(void)
{
    type_register_static(&virtio_cryptodev_info);
}

type_init(virtio_cryptodev_register_types)
