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
 * worker uses it lives until the worker is done.  A session's crypt requests
 * run one at a time in ring order (a chained IV or hash state depends on the
 * one before), so the guest may have many in flight on one session; a
 * per-session mutex also keeps the main loop's HASH_COPY off a worker's
 * engine state.  Reset and unrealize wait for the
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
QEMU_BUILD_BUG_ON(sizeof(struct vcd_config) != 32);
QEMU_BUILD_BUG_ON(sizeof(struct vcd_aead) != 16);

#define VCD_HANDLE_SLOT_BITS 16
#define VCD_HANDLE_SLOT_MASK ((1u << VCD_HANDLE_SLOT_BITS) - 1)

struct VcdHandle {
    uint32_t id;
    /* session id -> VcdSession *, holding the table's reference */
    GHashTable *sessions;
    VcdUseStats use;
};

/* One popped element; VirtQueueElement must stay first for virtqueue_pop(). */
typedef struct VcdRequest {
    VirtQueueElement elem;
    VirtIOCryptodev *vcd;
    VcdSession *ses;
    QSIMPLEQ_ENTRY(VcdRequest) next;    /* on ses->backlog */
    uint64_t seq;
    struct vcd_req req;     /* host-endian copy */
    size_t in_size;
    uint8_t iv[VCD_IV_LEN];
    uint8_t iv_out[VCD_IV_LEN];
    uint8_t *src;
    uint8_t *dst;
    uint8_t mac[VCD_MAX_DIGEST_LEN];
    uint8_t *aad;           /* AUTHCRYPT */
    uint32_t aad_len;
    uint32_t tag_len;
    uint32_t dst_len;       /* AUTHCRYPT: bytes written to dst */
    uint32_t ivlen_out;     /* bytes of IV to write back, 0 for none */
    uint32_t maclen;        /* bytes of digest to write back, 0 for none */
    bool hash_reset;
    uint32_t status;
} VcdRequest;

/* ------------------------------------------------------------------ */
/* algorithms                                                          */

/* Sizes as cryptodev-linux (the Linux crypto API) has them. */
static const VcdAlgInfo vcd_algs[] = {
    { VCD_CIPHER_AES_CBC, "cbc(aes)", true, { 16, 24, 32 }, 16, 16 },
    { VCD_CIPHER_AES_ECB, "ecb(aes)", true, { 16, 24, 32 }, 0, 16 },
    { VCD_CIPHER_AES_CTR, "ctr(aes)", true, { 16, 24, 32 }, 16, 1 },
    { VCD_CIPHER_AES_XTS, "xts(aes)", true, { 32, 64 }, 16, 16 },
    { VCD_CIPHER_3DES_CBC, "cbc(des3_ede)", true, { 24 }, 8, 8 },
    { VCD_CIPHER_AES_GCM, "gcm(aes)", true, { 16, 24, 32 }, VCD_GCM_IV_LEN, 1,
      .aead = true },
    { VCD_MAC_MD5, "md5", .digestlen = 16 },
    { VCD_MAC_SHA1, "sha1", .digestlen = 20 },
    { VCD_MAC_SHA224, "sha224", .digestlen = 28 },
    { VCD_MAC_SHA256, "sha256", .digestlen = 32 },
    { VCD_MAC_SHA384, "sha384", .digestlen = 48 },
    { VCD_MAC_SHA512, "sha512", .digestlen = 64 },
    { VCD_MAC_MD5_HMAC, "hmac(md5)", .digestlen = 16, .keyed = true },
    { VCD_MAC_SHA1_HMAC, "hmac(sha1)", .digestlen = 20, .keyed = true },
    { VCD_MAC_SHA224_HMAC, "hmac(sha224)", .digestlen = 28, .keyed = true },
    { VCD_MAC_SHA256_HMAC, "hmac(sha256)", .digestlen = 32, .keyed = true },
    { VCD_MAC_SHA384_HMAC, "hmac(sha384)", .digestlen = 48, .keyed = true },
    { VCD_MAC_SHA512_HMAC, "hmac(sha512)", .digestlen = 64, .keyed = true },
};

const VcdAlgInfo *vcd_alg_info(uint32_t alg)
{
    unsigned i;

    for (i = 0; i < ARRAY_SIZE(vcd_algs); i++) {
        if (vcd_algs[i].alg == alg) {
            return &vcd_algs[i];
        }
    }
    return NULL;
}

static bool vcd_has(VirtIOCryptodev *vcd, unsigned feature)
{
    return virtio_vdev_has_feature(VIRTIO_DEVICE(vcd), feature);
}

/*
 * The algorithm the guest may use: one the engine has, and, unless the
 * guest negotiated VCD_F_ALGS, one of the first protocol version's.
 */
static const VcdAlgInfo *vcd_usable_alg(VirtIOCryptodev *vcd, uint32_t alg,
                                        bool cipher)
{
    const VcdAlgInfo *info = vcd_alg_info(alg);

    if (!info || info->is_cipher != cipher || alg >= VCD_ALG_BITS ||
        !(vcd->algs[alg / 32] & (1u << (alg % 32)))) {
        return NULL;
    }
    if (!vcd_has(vcd, VCD_F_ALGS) && alg != VCD_CIPHER_AES_CBC &&
        alg != VCD_MAC_SHA256_HMAC) {
        return NULL;
    }
    if (info->aead && !vcd_has(vcd, VCD_F_AEAD)) {
        return NULL;
    }
    return info;
}

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
        /* The budgets count live engine state, in flight or not. */
        vcd->nsessions--;
        if (ses->mac) {
            vcd->nhash--;
        }
    }
    qemu_mutex_destroy(&ses->lock);
    g_free(ses);
}

static VcdSession *vcd_session_lookup(VcdHandle *h, uint32_t id)
{
    return g_hash_table_lookup(h->sessions, GUINT_TO_POINTER(id));
}

static void vcd_handle_free(VirtIOCryptodev *vcd, uint32_t slot)
{
    VcdHandle *h = vcd->handles[slot];
    GHashTableIter it;
    gpointer ses;

    g_hash_table_iter_init(&it, h->sessions);
    while (g_hash_table_iter_next(&it, NULL, &ses)) {
        vcd_session_unref(vcd, ses);
    }
    g_hash_table_destroy(h->sessions);
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
    g_free(r->aad);
    explicit_bzero(r->iv, sizeof(r->iv));
    explicit_bzero(r->iv_out, sizeof(r->iv_out));
    g_free(r);
}

static int vcd_crypt_worker(void *opaque)
{
    VcdRequest *r = opaque;
    VcdSession *ses = r->ses;
    VcdCryptOp op = {
        .encrypt = r->req.op == VCD_OP_ENCRYPT,
        .len = r->req.len,
        .iv = r->req.ivlen ? r->iv : NULL,
        .iv_out = r->ivlen_out ? r->iv_out : NULL,
        .src = r->src,
        .dst = ses->cipher ? r->dst : NULL,
        .hash_reset = r->hash_reset,
        .mac = r->maclen ? r->mac : NULL,
    };

    qemu_mutex_lock(&ses->lock);
    if (r->req.cmd == VCD_CMD_AUTHCRYPT) {
        VcdAeadOp aop = {
            .encrypt = op.encrypt,
            .iv = r->iv,
            .aad = r->aad,
            .aad_len = r->aad_len,
            .src = r->src,
            .len = r->req.len,
            .dst = r->dst,
            .tag_len = r->tag_len,
        };

        r->status = r->vcd->engine->aead(ses, &aop);
    } else {
        r->status = r->vcd->engine->crypt(ses, &op);
    }
    qemu_mutex_unlock(&ses->lock);
    return 0;
}

/* Write a finished crypt's results to the guest, answer it and free it. */
static void vcd_crypt_complete(VirtIOCryptodev *vcd, VcdRequest *r)
{
    struct vcd_resp resp = { .status = cpu_to_le32(r->status) };
    size_t off = 0;

    if (r->status == VCD_S_OK && r->req.cmd == VCD_CMD_AUTHCRYPT) {
        iov_from_buf(r->elem.in_sg, r->elem.in_num, 0, r->dst, r->dst_len);
    } else if (r->status == VCD_S_OK) {
        if (r->ses->cipher && r->req.len) {
            off += iov_from_buf(r->elem.in_sg, r->elem.in_num, 0,
                                r->dst, r->req.len);
        }
        if (r->ivlen_out) {
            off += iov_from_buf(r->elem.in_sg, r->elem.in_num, off,
                                r->iv_out, r->ivlen_out);
        }
        if (r->maclen) {
            iov_from_buf(r->elem.in_sg, r->elem.in_num, off,
                         r->mac, r->maclen);
        }
    }
    resp.session = cpu_to_le32(r->req.session);
    vcd_finish(vcd, r, &resp);
    vcd_free_request(vcd, r);
}

typedef enum {
    VCD_CRYPT_REFUSED,  /* *st says why; the caller answers */
    VCD_CRYPT_ANSWERED, /* done inline and pushed */
    VCD_CRYPT_QUEUED,   /* a worker or the session's backlog owns it */
} VcdCryptFate;

static VcdCryptFate vcd_crypt_start(VirtIOCryptodev *vcd, VcdRequest *r);

static void vcd_crypt_done(void *opaque, int ret)
{
    VcdRequest *r = opaque;
    VirtIOCryptodev *vcd = r->vcd;
    VcdSession *ses = r->ses;
    VcdRequest *next;

    ses->refs++;    /* its backlog runs after r is freed */
    vcd_crypt_complete(vcd, r);
    vcd->inflight--;
    ses->on_worker = false;
    /* The session's next requests, in ring order, until one needs a worker. */
    while (!ses->on_worker && (next = QSIMPLEQ_FIRST(&ses->backlog))) {
        QSIMPLEQ_REMOVE_HEAD(&ses->backlog, next);
        vcd->inflight--;
        vcd_crypt_start(vcd, next);
    }
    vcd_session_unref(vcd, ses);
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
    if (q->session2 && !(session && q->cmd == VCD_CMD_HASH_COPY)) {
        return false;
    }
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
    h->sessions = g_hash_table_new(NULL, NULL);
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
    const VcdAlgInfo *calg = NULL, *malg = NULL;
    uint8_t key[VCD_MAX_KEY_LEN];
    uint8_t *mackey = NULL;
    VcdSession *ses;
    uint32_t st;
    unsigned i;

    if (q->cipher == VCD_CIPHER_NONE && q->mac == VCD_MAC_NONE) {
        return VCD_S_INVAL;
    }
    if (q->cipher) {
        calg = vcd_usable_alg(vcd, q->cipher, true);
        if (!calg) {
            return VCD_S_NOTSUPP;
        }
    }
    if (q->mac) {
        malg = vcd_usable_alg(vcd, q->mac, false);
        if (!malg) {
            return VCD_S_NOTSUPP;
        }
    }
    if (calg && calg->aead && malg) {
        return VCD_S_INVAL;     /* GCM authenticates by itself */
    }
    if (calg) {
        for (i = 0; i < ARRAY_SIZE(calg->keylens); i++) {
            if (calg->keylens[i] && q->keylen == calg->keylens[i]) {
                break;
            }
        }
        if (i == ARRAY_SIZE(calg->keylens)) {
            return VCD_S_INVAL;
        }
    } else if (q->keylen) {
        return VCD_S_INVAL;
    }
    if (malg ? (malg->keyed ? q->mackeylen > VCD_MAX_MAC_KEY_LEN :
                q->mackeylen != 0) : q->mackeylen != 0) {
        return VCD_S_INVAL;
    }
    if (iov_size(r->elem.out_sg, r->elem.out_num) !=
        sizeof(struct vcd_req) + (uint64_t)q->keylen + q->mackeylen ||
        r->in_size != sizeof(*resp)) {
        return VCD_S_BADMSG;
    }
    /* Device-wide budgets: a guest cannot make the host hold more. */
    if (vcd->nsessions >= vcd->max_sessions ||
        (malg && vcd->nhash >= vcd->max_hash_states)) {
        return VCD_S_LIMIT;
    }
    ses = g_try_new0(VcdSession, 1);
    if (!ses) {
        return VCD_S_NOMEM;
    }
    vcd_use_stats_init(&ses->use);
    /* Unguessable, unique within the handle, never 0. */
    do {
        ses->id = g_random_int();
    } while (!ses->id || vcd_session_lookup(h, ses->id));
    ses->cipher = q->cipher;
    ses->mac = q->mac;
    ses->refs = 1;
    qemu_mutex_init(&ses->lock);
    QSIMPLEQ_INIT(&ses->backlog);

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
        ses->priv = NULL;
        vcd_session_unref(vcd, ses);
        return st;
    }
    vcd->nsessions++;
    if (ses->mac) {
        vcd->nhash++;
    }
    g_hash_table_insert(h->sessions, GUINT_TO_POINTER(ses->id), ses);
    resp->session = cpu_to_le32(ses->id);
    return VCD_S_OK;
}

/* CIOCCPHASH: @dst's MAC state becomes a copy of @src's. */
static uint32_t vcd_hash_copy(VirtIOCryptodev *vcd, VcdSession *dst,
                              VcdSession *src)
{
    uint32_t st;

    if (!vcd_has(vcd, VCD_F_MULTIPART)) {
        return VCD_S_NOTSUPP;
    }
    if (!dst->mac || dst->mac != src->mac) {
        return VCD_S_INVAL;
    }
    if (dst == src) {
        return VCD_S_OK;
    }
    /* Workers hold at most one session lock each: no order to deadlock. */
    qemu_mutex_lock(&src->lock);
    qemu_mutex_lock(&dst->lock);
    st = vcd->engine->hash_copy(dst, src);
    qemu_mutex_unlock(&dst->lock);
    qemu_mutex_unlock(&src->lock);
    return st;
}

/*
 * Check a CRYPT's flags and IV against its session and work out what it
 * writes back: r->ivlen_out, r->maclen, r->hash_reset.
 */
static uint32_t vcd_crypt_sizes(VirtIOCryptodev *vcd, VcdSession *ses,
                                VcdRequest *r)
{
    const struct vcd_req *q = &r->req;
    const VcdAlgInfo *calg = ses->cipher ? vcd_alg_info(ses->cipher) : NULL;
    const VcdAlgInfo *malg = ses->mac ? vcd_alg_info(ses->mac) : NULL;
    uint16_t flags = q->flags;

    if (calg && calg->aead) {
        return VCD_S_INVAL;     /* AEAD sessions take AUTHCRYPT */
    }
    if (!vcd_has(vcd, VCD_F_ALGS)) {
        /* The first protocol version: explicit IVs, one-shot MACs. */
        if (flags || (calg && q->ivlen != calg->ivlen)) {
            return VCD_S_INVAL;
        }
        flags = malg ? VCD_CF_HASH_RESET | VCD_CF_HASH_FINAL : 0;
    }
    if (flags & ~VCD_CF_ALL) {
        return VCD_S_INVAL;
    }
    if ((flags & (VCD_CF_HASH_RESET | VCD_CF_HASH_FINAL)) && !malg) {
        return VCD_S_INVAL;
    }
    if (malg && !vcd_has(vcd, VCD_F_MULTIPART) &&
        (flags & (VCD_CF_HASH_RESET | VCD_CF_HASH_FINAL)) !=
        (VCD_CF_HASH_RESET | VCD_CF_HASH_FINAL)) {
        return VCD_S_NOTSUPP;
    }
    if ((flags & VCD_CF_IV_OUT) && !(calg && calg->ivlen)) {
        return VCD_S_INVAL;
    }
    if (calg ? (q->ivlen && q->ivlen != calg->ivlen) || q->len % calg->blocklen
             : q->ivlen != 0) {
        return VCD_S_INVAL;
    }
    r->hash_reset = flags & VCD_CF_HASH_RESET;
    r->maclen = flags & VCD_CF_HASH_FINAL ? malg->digestlen : 0;
    r->ivlen_out = flags & VCD_CF_IV_OUT ? calg->ivlen : 0;
    return VCD_S_OK;
}

/* Run a request inline or on a worker; its session is free of other work. */
static VcdCryptFate vcd_crypt_start(VirtIOCryptodev *vcd, VcdRequest *r)
{
    if (r->req.len <= vcd->inline_max) {
        /*
         * Short work is answered in this batch: handing it to a worker and back
         * costs more than the crypto itself (tens of microseconds here).
         */
        vcd_crypt_worker(r);
        vcd_crypt_complete(vcd, r);
        return VCD_CRYPT_ANSWERED;
    }
    r->ses->on_worker = true;
    vcd->inflight++;
    vcd->stats.worker++;
    thread_pool_submit_aio(aio_get_thread_pool(qemu_get_aio_context()),
                           vcd_crypt_worker, r, vcd_crypt_done, r);
    return VCD_CRYPT_QUEUED;
}

/*
 * Run a prepared CRYPT or AUTHCRYPT.  A session's requests run in ring order,
 * as cryptodev-linux runs one file's: a chained IV or a multi-part hash
 * depends on the request before, so while a worker has one of the session's
 * requests, the next ones wait behind it instead of overtaking it inline.
 */
static VcdCryptFate vcd_crypt_run(VirtIOCryptodev *vcd, VcdSession *ses,
                                  VcdRequest *r)
{
    ses->refs++;
    r->ses = ses;
    if (ses->on_worker) {
        QSIMPLEQ_INSERT_TAIL(&ses->backlog, r, next);
        vcd->inflight++;    /* reset waits for it like for a worker */
        return VCD_CRYPT_QUEUED;
    }
    return vcd_crypt_start(vcd, r);
}

/* AUTHCRYPT: check the AEAD header and sizes, copy the input, run it. */
static VcdCryptFate vcd_authcrypt_submit(VirtIOCryptodev *vcd, VcdSession *ses,
                                         VcdRequest *r, uint32_t *st)
{
    const struct vcd_req *q = &r->req;
    const VcdAlgInfo *calg = ses->cipher ? vcd_alg_info(ses->cipher) : NULL;
    struct vcd_aead wire;
    uint64_t want_out;
    size_t off = sizeof(struct vcd_req);

    *st = VCD_S_INVAL;
    if (q->op != VCD_OP_ENCRYPT && q->op != VCD_OP_DECRYPT) {
        return VCD_CRYPT_REFUSED;
    }
    if (!calg || !calg->aead || q->flags || q->len > VCD_MAX_DATA_LEN ||
        q->ivlen != VCD_GCM_IV_LEN) {
        return VCD_CRYPT_REFUSED;
    }
    if (iov_to_buf(r->elem.out_sg, r->elem.out_num, off, &wire,
                   sizeof(wire)) != sizeof(wire)) {
        *st = VCD_S_BADMSG;
        return VCD_CRYPT_REFUSED;
    }
    r->aad_len = le32_to_cpu(wire.auth_len);
    r->tag_len = le32_to_cpu(wire.tag_len) ?: VCD_GCM_TAG_LEN;
    if (wire.reserved[0] || wire.reserved[1] || r->aad_len > VCD_MAX_AAD_LEN ||
        r->tag_len > VCD_GCM_TAG_LEN || (r->tag_len < 12 && r->tag_len != 4 &&
                                         r->tag_len != 8)) {
        return VCD_CRYPT_REFUSED;
    }
    if (q->op == VCD_OP_DECRYPT && q->len < r->tag_len) {
        return VCD_CRYPT_REFUSED;
    }
    r->dst_len = q->op == VCD_OP_ENCRYPT ? q->len + r->tag_len
                                         : q->len - r->tag_len;
    want_out = off + sizeof(wire) + (uint64_t)q->ivlen + r->aad_len + q->len;
    if (iov_size(r->elem.out_sg, r->elem.out_num) != want_out ||
        r->in_size != sizeof(struct vcd_resp) + (uint64_t)r->dst_len) {
        *st = VCD_S_BADMSG;
        return VCD_CRYPT_REFUSED;
    }
    r->src = g_try_malloc(q->len ? q->len : 1);
    r->dst = g_try_malloc(r->dst_len ? r->dst_len : 1);
    r->aad = g_try_malloc(r->aad_len ? r->aad_len : 1);
    if (!r->src || !r->dst || !r->aad) {
        *st = VCD_S_NOMEM;
        return VCD_CRYPT_REFUSED;
    }
    off += sizeof(wire);
    off += iov_to_buf(r->elem.out_sg, r->elem.out_num, off, r->iv, q->ivlen);
    off += iov_to_buf(r->elem.out_sg, r->elem.out_num, off, r->aad,
                      r->aad_len);
    iov_to_buf(r->elem.out_sg, r->elem.out_num, off, r->src, q->len);
    *st = VCD_S_OK;
    return vcd_crypt_run(vcd, ses, r);
}

static VcdCryptFate vcd_crypt_submit(VirtIOCryptodev *vcd, VcdSession *ses,
                                     VcdRequest *r, uint32_t *st)
{
    const struct vcd_req *q = &r->req;
    uint64_t want_out, want_in;

    if (q->op != VCD_OP_ENCRYPT && q->op != VCD_OP_DECRYPT) {
        *st = VCD_S_INVAL;
        return VCD_CRYPT_REFUSED;
    }
    if (q->len > VCD_MAX_DATA_LEN) {
        *st = VCD_S_INVAL;
        return VCD_CRYPT_REFUSED;
    }
    *st = vcd_crypt_sizes(vcd, ses, r);
    if (*st != VCD_S_OK) {
        return VCD_CRYPT_REFUSED;
    }
    want_out = sizeof(struct vcd_req) + (uint64_t)q->ivlen + q->len;
    want_in = sizeof(struct vcd_resp) + (ses->cipher ? (uint64_t)q->len : 0) +
              r->ivlen_out + r->maclen;
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
    return vcd_crypt_run(vcd, ses, r);
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
    VcdSession *ses;
    VcdCryptFate fate;

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
    q->session2 = le32_to_cpu(wire.session2);
    trace_virtio_cryptodev_request(vcd, r->seq, q->type, q->cmd, q->handle,
                                   q->session, q->op, q->len, out_size,
                                   r->in_size);
    trace_virtio_cryptodev_chain(vcd, r->seq, r->elem.out_num, r->elem.in_num,
                                 q->cipher, q->mac);

    if (r->in_size < sizeof(resp)) {
        st = VCD_S_BADMSG;
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
    case VCD_CMD_HASH_COPY:
    case VCD_CMD_AUTHCRYPT:
        break;
    default:
        st = VCD_S_NOTSUPP;
        goto out;
    }

    if (!vcd_unused_zero(q, true, false, q->cmd == VCD_CMD_CRYPT ||
                         q->cmd == VCD_CMD_AUTHCRYPT)) {
        st = VCD_S_INVAL;
        goto out;
    }
    h = vcd_handle_lookup(vcd, q->handle);
    if (!h) {
        st = VCD_S_NOHANDLE;
        goto out;
    }
    ses = vcd_session_lookup(h, q->session);
    if (!ses) {
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
        g_hash_table_remove(h->sessions, GUINT_TO_POINTER(ses->id));
        vcd_session_unref(vcd, ses);
        break;
    case VCD_CMD_HASH_COPY:
        if (out_size != sizeof(wire) || r->in_size != sizeof(resp)) {
            st = VCD_S_BADMSG;
        } else if (!vcd_session_lookup(h, q->session2)) {
            st = VCD_S_NOSESSION;
        } else {
            st = vcd_hash_copy(vcd, ses,
                               vcd_session_lookup(h, q->session2));
        }
        break;
    case VCD_CMD_SESSION_INFO: {
        struct vcd_session_info info = { 0 };

        if (out_size != sizeof(wire) ||
            r->in_size != sizeof(info) + sizeof(resp)) {
            st = VCD_S_BADMSG;
            break;
        }
        vcd->engine->session_info(ses, &info);
        iov_from_buf(r->elem.in_sg, r->elem.in_num, 0, &info, sizeof(info));
        break;
    }
    case VCD_CMD_CRYPT:
    case VCD_CMD_AUTHCRYPT:
        fate = q->cmd == VCD_CMD_CRYPT ? vcd_crypt_submit(vcd, ses, r, &st)
                                       : vcd_authcrypt_submit(vcd, ses, r, &st);
        switch (fate) {
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
    VirtIOCryptodev *vcd = VIRTIO_CRYPTODEV(vdev);

    /*
     * VIRTIO_F_RING_RESET is not offered: a per-queue reset would have to
     * wait for that queue's workers, and the one queue's reset is the
     * device's reset, which does.
     */
    virtio_clear_feature(&f, VIRTIO_F_RING_RESET);
    return f | vcd->features;
}

static void vcd_get_config(VirtIODevice *vdev, uint8_t *config)
{
    VirtIOCryptodev *vcd = VIRTIO_CRYPTODEV(vdev);
    struct vcd_config cfg = { 0 };
    unsigned i;

    for (i = 0; i < ARRAY_SIZE(cfg.algs); i++) {
        cfg.algs[i] = cpu_to_le32(vcd->algs[i]);
    }
    cfg.max_data_len = cpu_to_le32(VCD_MAX_DATA_LEN);
    cfg.max_handles = cpu_to_le32(VCD_MAX_HANDLES);
    cfg.max_sessions = cpu_to_le32(vcd->max_sessions);
    cfg.max_hash_states = cpu_to_le32(vcd->max_hash_states);
    memcpy(config, &cfg, sizeof(cfg));
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
    uint32_t alg;

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
    memset(vcd->algs, 0, sizeof(vcd->algs));
    for (alg = 1; alg < VCD_ALG_BITS; alg++) {
        if (vcd_alg_info(alg) && vcd->engine->supports(alg)) {
            vcd->algs[alg / 32] |= 1u << (alg % 32);
        }
    }

    virtio_init(vdev, VIRTIO_ID_CRYPTODEV, sizeof(struct vcd_config));
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

    vcd_stats_visit(v, name, &vcd->stats, vcd->inflight, vcd->nhandles,
                    vcd->nsessions, errp);
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
    GHashTableIter it;
    gpointer ses;
    bool ok;

    if (!visit_start_struct(v, NULL, NULL, 0, errp)) {
        return false;
    }
    ok = visit_type_uint64(v, "handle", &id, errp) &&
         vcd_use_stats_visit(v, &h->use, now, errp) &&
         visit_start_list(v, "sessions", NULL, 0, errp);
    if (ok) {
        g_hash_table_iter_init(&it, h->sessions);
        while (ok && g_hash_table_iter_next(&it, NULL, &ses)) {
            ok = vcd_visit_session(v, ses, now, errp);
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
    /* Crypt requests up to this many bytes run inline, larger on workers. */
    DEFINE_PROP_UINT32("inline-max", VirtIOCryptodev, inline_max, 64 * 1024),
    /* Budgets of host state the guest can make the device hold. */
    DEFINE_PROP_UINT32("max-sessions", VirtIOCryptodev, max_sessions,
                       VCD_MAX_SESSIONS),
    DEFINE_PROP_UINT32("max-hash-states", VirtIOCryptodev, max_hash_states,
                       VCD_MAX_HASH_STATES),
    /* Off: behave as the first protocol version (no discovery). */
    DEFINE_PROP_BIT64("algs", VirtIOCryptodev, features, VCD_F_ALGS, true),
    DEFINE_PROP_BIT64("multipart", VirtIOCryptodev, features,
                      VCD_F_MULTIPART, true),
    DEFINE_PROP_BIT64("aead", VirtIOCryptodev, features, VCD_F_AEAD, true),
    DEFINE_PROP_BIT64("ordered", VirtIOCryptodev, features, VCD_F_ORDERED,
                      true),
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
    vdc->get_config = vcd_get_config;
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
