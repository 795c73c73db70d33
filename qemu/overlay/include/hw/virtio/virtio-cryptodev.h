/*
 * virtio-cryptodev: a paravirtualized cryptodev-linux style crypto device
 *
 * The wire protocol lives in virtio_cryptodev.h, copied from the guest
 * frontend's kernel/ directory at build time so that both sides compile the
 * very same definitions.
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */

#ifndef QEMU_VIRTIO_CRYPTODEV_H
#define QEMU_VIRTIO_CRYPTODEV_H

#include "hw/virtio/virtio.h"
#include "hw/virtio/virtio_cryptodev.h"
#include "hw/virtio/virtio-cryptodev-stats.h"
#include "qom/object.h"

#define TYPE_VIRTIO_CRYPTODEV "virtio-cryptodev-device"
OBJECT_DECLARE_SIMPLE_TYPE(VirtIOCryptodev, VIRTIO_CRYPTODEV)

typedef struct VcdHandle VcdHandle;
typedef struct VcdEngine VcdEngine;

struct VirtIOCryptodev {
    VirtIODevice parent_obj;

    VirtQueue *vq;
    /* Coalesces the guest notifications of requests completed by workers. */
    QEMUBH *notify_bh;
    const VcdEngine *engine;
    char *engine_prop;
    uint32_t inline_max;
    uint32_t max_sessions;
    uint32_t max_hash_states;
    uint64_t features;          /* VCD_F_* offered */
    /* Algorithms the engine has, by cryptodev-linux number (vcd_config). */
    uint32_t algs[VCD_ALG_BITS / 32];

    /* Requests handed to the thread pool and not yet pushed back. */
    unsigned inflight;
    uint64_t seq;

    VcdHandle *handles[VCD_MAX_HANDLES];
    uint16_t handle_gen[VCD_MAX_HANDLES];
    unsigned nhandles;
    /* Live sessions and MAC sessions, against the budgets above. */
    unsigned nsessions;
    unsigned nhash;

    /* Main loop only; read by the "stats" and "handles" QOM properties. */
    VcdStats stats;
};

#endif
