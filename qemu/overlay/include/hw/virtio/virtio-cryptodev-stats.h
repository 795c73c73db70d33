/*
 * virtio-cryptodev: what the device has done and holds, for QMP (qom-get)
 *
 * Counters live in the device and are touched only on the main loop (under
 * the BQL), as are the handle and session tables, so reading them from a QOM
 * property getter needs no lock.  Properties of the device object:
 *
 *   stats    requests by command, statuses, CRYPT bytes answered OK, CRYPTs
 *            run inline or on a worker, requests in flight, open handles
 *   handles  each open handle with its age and its sessions (algorithm, age,
 *            requests, bytes)
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */

#ifndef QEMU_VIRTIO_CRYPTODEV_STATS_H
#define QEMU_VIRTIO_CRYPTODEV_STATS_H

#include "qapi/visitor.h"

/* Request kinds counted apart: the calls, then the ioctl commands. */
enum {
    VCD_STAT_OPEN,
    VCD_STAT_CLOSE,
    VCD_STAT_SESSION_CREATE,
    VCD_STAT_SESSION_DESTROY,
    VCD_STAT_CRYPT,
    VCD_STAT_SESSION_INFO,
    VCD_STAT_OTHER,             /* malformed or unknown */
    VCD_STAT_KINDS,
};

#define VCD_STAT_STATUSES 10    /* VCD_S_* values, the last slot for others */

typedef struct VcdStats {
    uint64_t requests[VCD_STAT_KINDS];
    uint64_t statuses[VCD_STAT_STATUSES];
    uint64_t crypt_bytes;       /* CRYPT payload answered OK */
    uint64_t worker;            /* CRYPTs handed to the thread pool */
} VcdStats;

/* Per handle and per session. */
typedef struct VcdUseStats {
    int64_t created_ms;         /* QEMU_CLOCK_REALTIME */
    uint64_t requests;          /* CRYPTs that reached the engine */
    uint64_t bytes;             /* their payload answered OK */
} VcdUseStats;

/* Account one answered request (from the host-endian request fields). */
void vcd_stats_answered(VcdStats *s, uint32_t type, uint32_t cmd,
                        uint32_t len, uint32_t status);
void vcd_use_stats_init(VcdUseStats *u);
void vcd_use_stats_add(VcdUseStats *u, uint32_t len, uint32_t status);

/* Visitors for the QOM property getters. */
bool vcd_stats_visit(Visitor *v, const char *name, const VcdStats *s,
                     unsigned inflight, unsigned handles, unsigned sessions,
                     Error **errp);
bool vcd_use_stats_visit(Visitor *v, const VcdUseStats *u, int64_t now_ms,
                         Error **errp);

#endif
