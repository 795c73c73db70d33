/*
 * virtio-cryptodev: counters and their QOM visitors (see
 * virtio-cryptodev-stats.h)
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */

#include "qemu/osdep.h"
#include "qapi/error.h"
#include "qemu/timer.h"
#include "hw/virtio/virtio_cryptodev.h"
#include "hw/virtio/virtio-cryptodev-stats.h"

static const char *const vcd_stat_kind_names[VCD_STAT_KINDS] = {
    [VCD_STAT_OPEN] = "open",
    [VCD_STAT_CLOSE] = "close",
    [VCD_STAT_SESSION_CREATE] = "session-create",
    [VCD_STAT_SESSION_DESTROY] = "session-destroy",
    [VCD_STAT_CRYPT] = "crypt",
    [VCD_STAT_SESSION_INFO] = "session-info",
    [VCD_STAT_OTHER] = "other",
};

/* Index = VCD_S_*; names as cdev prints them. */
static const char *const vcd_stat_status_names[VCD_STAT_STATUSES] = {
    "OK", "BADMSG", "INVAL", "NOHANDLE", "NOSESSION", "NOTSUPP", "NOMEM",
    "LIMIT", "ENGINE", "other",
};

static unsigned vcd_stat_kind(uint32_t type, uint32_t cmd)
{
    switch (type) {
    case VCD_CALL_OPEN:
        return VCD_STAT_OPEN;
    case VCD_CALL_CLOSE:
        return VCD_STAT_CLOSE;
    case VCD_CALL_IOCTL:
        switch (cmd) {
        case VCD_CMD_SESSION_CREATE:
            return VCD_STAT_SESSION_CREATE;
        case VCD_CMD_SESSION_DESTROY:
            return VCD_STAT_SESSION_DESTROY;
        case VCD_CMD_CRYPT:
            return VCD_STAT_CRYPT;
        case VCD_CMD_SESSION_INFO:
            return VCD_STAT_SESSION_INFO;
        }
        break;
    }
    return VCD_STAT_OTHER;
}

void vcd_stats_answered(VcdStats *s, uint32_t type, uint32_t cmd,
                        uint32_t len, uint32_t status)
{
    unsigned kind = vcd_stat_kind(type, cmd);

    s->requests[kind]++;
    s->statuses[MIN(status, VCD_STAT_STATUSES - 1)]++;
    if (kind == VCD_STAT_CRYPT && status == VCD_S_OK) {
        s->crypt_bytes += len;
    }
}

void vcd_use_stats_init(VcdUseStats *u)
{
    *u = (VcdUseStats) {
        .created_ms = qemu_clock_get_ms(QEMU_CLOCK_REALTIME),
    };
}

void vcd_use_stats_add(VcdUseStats *u, uint32_t len, uint32_t status)
{
    u->requests++;
    if (status == VCD_S_OK) {
        u->bytes += len;
    }
}

static bool vcd_visit_u64(Visitor *v, const char *name, uint64_t value,
                          Error **errp)
{
    return visit_type_uint64(v, name, &value, errp);
}

static bool vcd_visit_counts(Visitor *v, const char *name,
                             const char *const *names, const uint64_t *counts,
                             unsigned n, Error **errp)
{
    unsigned i;

    if (!visit_start_struct(v, name, NULL, 0, errp)) {
        return false;
    }
    for (i = 0; i < n; i++) {
        if (!vcd_visit_u64(v, names[i], counts[i], errp)) {
            break;
        }
    }
    if (i == n) {
        visit_check_struct(v, errp);
    }
    visit_end_struct(v, NULL);
    return i == n;
}

bool vcd_stats_visit(Visitor *v, const char *name, const VcdStats *s,
                     unsigned inflight, unsigned handles, unsigned sessions,
                     Error **errp)
{
    uint64_t inline_crypts = s->requests[VCD_STAT_CRYPT] - s->worker;
    bool ok;

    if (!visit_start_struct(v, name, NULL, 0, errp)) {
        return false;
    }
    ok = vcd_visit_counts(v, "requests", vcd_stat_kind_names, s->requests,
                          VCD_STAT_KINDS, errp) &&
         vcd_visit_counts(v, "statuses", vcd_stat_status_names, s->statuses,
                          VCD_STAT_STATUSES, errp) &&
         vcd_visit_u64(v, "crypt-bytes", s->crypt_bytes, errp) &&
         vcd_visit_u64(v, "inline", inline_crypts, errp) &&
         vcd_visit_u64(v, "worker", s->worker, errp) &&
         vcd_visit_u64(v, "in-flight", inflight, errp) &&
         vcd_visit_u64(v, "handles", handles, errp) &&
         vcd_visit_u64(v, "sessions", sessions, errp);
    if (ok) {
        ok = visit_check_struct(v, errp);
    }
    visit_end_struct(v, NULL);
    return ok;
}

/* The fields of one handle's or session's entry (inside its struct). */
bool vcd_use_stats_visit(Visitor *v, const VcdUseStats *u, int64_t now_ms,
                         Error **errp)
{
    return vcd_visit_u64(v, "age-ms", MAX(now_ms - u->created_ms, 0), errp) &&
           vcd_visit_u64(v, "requests", u->requests, errp) &&
           vcd_visit_u64(v, "bytes", u->bytes, errp);
}
