/*
 * virtio-cryptodev: the interface between the request path and a host engine
 *
 * The request path (virtio-cryptodev.c) owns handles, sessions, lifetimes and
 * every check of what the guest sent; an engine only turns a checked session
 * or operation into crypto.  Engines never see a descriptor chain or a guest
 * address, only host buffers of validated sizes.
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */

#ifndef VIRTIO_CRYPTODEV_ENGINE_H
#define VIRTIO_CRYPTODEV_ENGINE_H

#include "qemu/queue.h"
#include "qemu/thread.h"
#include "hw/virtio/virtio_cryptodev.h"
#include "hw/virtio/virtio-cryptodev-stats.h"

typedef struct VcdSession {
    uint32_t id;
    uint32_t cipher;            /* VCD_CIPHER_* or VCD_CIPHER_NONE */
    uint32_t mac;               /* VCD_MAC_* or VCD_MAC_NONE */
    /* Main loop only: the table's reference plus one per in-flight request. */
    unsigned refs;
    /* Serializes the engine state (IV, hash state) between workers. */
    QemuMutex lock;
    /* Main loop only: a worker has one of its requests; the next ones wait. */
    bool on_worker;
    QSIMPLEQ_HEAD(, VcdRequest) backlog;
    /* The engine's own state for this session. */
    void *priv;
    /* Main loop only: for the "handles" QOM property. */
    VcdUseStats use;
} VcdSession;

/* One checked CRYPT: host buffers of the sizes the request path verified. */
typedef struct VcdCryptOp {
    bool encrypt;
    uint32_t len;               /* bytes in src (and dst) */
    const uint8_t *iv;          /* the cipher's IV size, or NULL: chained IV */
    uint8_t *iv_out;            /* the cipher's IV size, or NULL: not wanted */
    const uint8_t *src;
    uint8_t *dst;               /* len bytes with a cipher, else NULL */
    bool hash_reset;            /* MAC session: restart the state first */
    uint8_t *mac;               /* digest size: output and restart, or NULL */
} VcdCryptOp;

/* One checked AUTHCRYPT (AEAD): host buffers of verified sizes. */
typedef struct VcdAeadOp {
    bool encrypt;
    const uint8_t *iv;          /* VCD_GCM_IV_LEN bytes */
    const uint8_t *aad;
    uint32_t aad_len;
    const uint8_t *src;         /* plaintext, or ciphertext and tag */
    uint32_t len;               /* bytes in src */
    uint8_t *dst;               /* ciphertext and tag, or plaintext */
    uint32_t tag_len;
} VcdAeadOp;

typedef struct VcdEngine {
    const char *name;
    /* Whether this engine can run on this host at all; sets errp if not. */
    bool (*usable)(Error **errp);
    /* Whether the engine has cryptodev-linux algorithm number @alg. */
    bool (*supports)(uint32_t alg);
    /*
     * Create the engine state of @ses (ses->cipher and ses->mac are set,
     * supported, and the key sizes checked).  Returns a VCD_S_* status; on
     * failure nothing is left to free.
     */
    uint32_t (*session_init)(VcdSession *ses, const uint8_t *key,
                             uint32_t keylen, const uint8_t *mackey,
                             uint32_t mackeylen);
    /* Free (and wipe) the engine state; called once, after a good init. */
    void (*session_fini)(VcdSession *ses);
    /* Runs in a worker thread or inline, with ses->lock held. */
    uint32_t (*crypt)(VcdSession *ses, VcdCryptOp *op);
    /* AEAD sessions; VCD_S_BADTAG when the tag does not match. */
    uint32_t (*aead)(VcdSession *ses, VcdAeadOp *op);
    /* Replace @dst's MAC state with a copy of @src's; both locks held. */
    uint32_t (*hash_copy)(VcdSession *dst, VcdSession *src);
    void (*session_info)(VcdSession *ses, struct vcd_session_info *info);
} VcdEngine;

/* What the request path knows of an algorithm (cryptodev-linux semantics). */
typedef struct VcdAlgInfo {
    uint32_t alg;
    const char *name;           /* Linux crypto API name, for SESSION_INFO */
    bool is_cipher;
    uint8_t keylens[3];         /* accepted key sizes (cipher), 0 = unused */
    uint8_t ivlen;              /* cipher IV size; 0 for ECB */
    uint8_t blocklen;           /* len must be a multiple of this (1: any) */
    uint8_t digestlen;          /* MAC/hash output size */
    bool keyed;                 /* HMAC: takes a key */
    bool aead;                  /* AUTHCRYPT only (AES-GCM) */
} VcdAlgInfo;

/* The entry for @alg, or NULL when the protocol does not know it. */
const VcdAlgInfo *vcd_alg_info(uint32_t alg);

extern const VcdEngine vcd_engine_builtin;
extern const VcdEngine vcd_engine_host;

/* True when the host's /dev/crypto (cryptodev-linux) can be opened. */
bool vcd_host_crypto_present(void);

#endif
