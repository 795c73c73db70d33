/* SPDX-License-Identifier: GPL-2.0-only */
/*
 * virtio-cryptodev: per-device counters in sysfs
 *
 * /sys/class/virtio-cryptodev/cryptodevN/stats/ holds one number per file:
 *
 *   open_files  open files of the node (one device handle each; CRIOGET
 *               copies share their file)
 *   sessions    sessions held by those files
 *   in_flight   requests on the virtqueue, not answered yet
 *   completed   requests the device answered
 *   errors      requests answered with an error status, or taken back
 *               unanswered when the device went away
 *
 * Included once, by virtio_cryptodev.c. The counters are atomics so that the
 * hooks need no lock of their own whatever context they run in.
 */
#ifndef VIRTIO_CRYPTODEV_STATS_H
#define VIRTIO_CRYPTODEV_STATS_H

#include <linux/atomic.h>
#include <linux/device.h>
#include <linux/sysfs.h>

struct vcd_stats {
	atomic_long_t open_files;
	atomic_long_t sessions;
	atomic_long_t in_flight;
	atomic_long_t completed;
	atomic_long_t errors;
};

static inline void vcd_stats_answered(struct vcd_stats *s, bool ok)
{
	atomic_long_dec(&s->in_flight);
	atomic_long_inc(&s->completed);
	if (!ok)
		atomic_long_inc(&s->errors);
}

/* A request taken back unanswered (device removed). */
static inline void vcd_stats_dropped(struct vcd_stats *s)
{
	atomic_long_dec(&s->in_flight);
	atomic_long_inc(&s->errors);
}

#define VCD_STATS_ATTR(field)							\
static ssize_t field##_show(struct device *dev, struct device_attribute *attr,	\
			    char *buf)						\
{										\
	struct vcd_stats *s = dev_get_drvdata(dev);				\
										\
	return sysfs_emit(buf, "%ld\n", atomic_long_read(&s->field));		\
}										\
static DEVICE_ATTR_RO(field)

VCD_STATS_ATTR(open_files);
VCD_STATS_ATTR(sessions);
VCD_STATS_ATTR(in_flight);
VCD_STATS_ATTR(completed);
VCD_STATS_ATTR(errors);

static struct attribute *vcd_stats_attrs[] = {
	&dev_attr_open_files.attr,
	&dev_attr_sessions.attr,
	&dev_attr_in_flight.attr,
	&dev_attr_completed.attr,
	&dev_attr_errors.attr,
	NULL,
};

static const struct attribute_group vcd_stats_group = {
	.name = "stats",
	.attrs = vcd_stats_attrs,
};

static const struct attribute_group *vcd_stats_groups[] = {
	&vcd_stats_group,
	NULL,
};

#endif
