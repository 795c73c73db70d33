// SPDX-License-Identifier: GPL-2.0-only
/*
 * virtio-cryptodev guest frontend: /dev/cryptodevN speaks the cryptodev-linux ioctl
 * ABI and forwards every call over one virtqueue to the host (see virtio_cryptodev.h
 * for the wire protocol).
 *
 * Lifetime and locking
 * --------------------
 * struct vcd_device embeds the char device and its struct device; the struct device's
 * release frees it. An open file holds the cdev (and so the device) until it is
 * released, so a file outliving a hot-unplugged device only sees -ENODEV.
 *
 * vcd->lock (spinlock, irq-safe) guards the virtqueue and the "broken" flag; nothing
 * sleeps or allocates with GFP_KERNEL under it. vcd->remove_sem is held for reading by
 * a submitter between adding a request and notifying the device, so that removal
 * (write side) cannot delete the virtqueue under a notify.
 *
 * Each request is a refcounted struct vcd_request that owns every buffer of its
 * descriptor chain: one reference for the waiting task, one for the device while the
 * chain is in the ring. The virtqueue callback completes and drops the device's
 * reference; a task killed while waiting drops its own and leaves the buffers to the
 * callback, so the device never writes into freed memory. An OPEN or SESSION_CREATE
 * whose waiter was killed after the host created the handle or session has it closed
 * or destroyed by a work item, so host and guest counts never drift.
 *
 * CIOCASYNCCRYPT requests have no waiting task: the file holds the first reference on
 * vf->async (submission order) until CIOCASYNCFETCH or release takes it; the callback
 * wakes vf->async_wq through r->waitq, which release clears under vcd->lock.
 *
 * Suspend/hibernate: freeze refuses new requests (-ENODEV), lets those on the ring be
 * answered, then takes the queue down as removal does; restore brings it back. The
 * reset between them drops every handle and session on the host, so files opened
 * before answer -EBADF afterwards and never send anything again (their handle number
 * may belong to a newer file by then).
 */

#define pr_fmt(fmt) KBUILD_MODNAME ": " fmt

#include <linux/cdev.h>
#include <linux/compat.h>
#include <linux/completion.h>
#include <linux/debugfs.h>
#include <linux/device.h>
#include <linux/file.h>
#include <linux/fs.h>
#include <linux/idr.h>
#include <linux/mm.h>
#include <linux/module.h>
#include <linux/mutex.h>
#include <linux/poll.h>
#include <linux/refcount.h>
#include <linux/rwsem.h>
#include <linux/scatterlist.h>
#include <linux/slab.h>
#include <linux/spinlock.h>
#include <linux/uaccess.h>
#include <linux/virtio.h>
#include <linux/virtio_config.h>
#include <linux/virtio_ring.h>
#include <linux/wait.h>
#include <linux/workqueue.h>
#include <linux/xarray.h>

#include "cryptodev.h"
#include "virtio_cryptodev.h"
#include "virtio_cryptodev_stats.h"

#define VCD_DRIVER_NAME	"virtio-cryptodev"
#define VCD_MINORS	256

/*
 * What this driver knows of each algorithm, as cryptodev-linux (the Linux crypto API)
 * has it; the device says in its config space which of them it has.
 */
struct vcd_alg {
	u32 alg;
	bool cipher;
	u8 keylens[3];			/* accepted key sizes (ciphers) */
	u8 ivlen;			/* 0: no IV (ECB) */
	u8 blocklen;			/* len must be a multiple (1: any) */
	u8 digestlen;
	bool keyed;			/* HMAC */
	bool aead;			/* CIOCAUTHCRYPT only */
};

static const struct vcd_alg vcd_algs[] = {
	{ CRYPTO_AES_CBC, true, { 16, 24, 32 }, 16, 16 },
	{ CRYPTO_AES_ECB, true, { 16, 24, 32 }, 0, 16 },
	{ CRYPTO_AES_CTR, true, { 16, 24, 32 }, 16, 1 },
	{ CRYPTO_AES_XTS, true, { 32, 64 }, 16, 16 },
	{ CRYPTO_3DES_CBC, true, { 24 }, 8, 8 },
	{ CRYPTO_AES_GCM, true, { 16, 24, 32 }, VCD_GCM_IV_LEN, 1, .aead = true },
	{ CRYPTO_MD5, .digestlen = 16 },
	{ CRYPTO_SHA1, .digestlen = 20 },
	{ CRYPTO_SHA2_224, .digestlen = 28 },
	{ CRYPTO_SHA2_256, .digestlen = 32 },
	{ CRYPTO_SHA2_384, .digestlen = 48 },
	{ CRYPTO_SHA2_512, .digestlen = 64 },
	{ CRYPTO_MD5_HMAC, .digestlen = 16, .keyed = true },
	{ CRYPTO_SHA1_HMAC, .digestlen = 20, .keyed = true },
	{ CRYPTO_SHA2_224_HMAC, .digestlen = 28, .keyed = true },
	{ CRYPTO_SHA2_256_HMAC, .digestlen = 32, .keyed = true },
	{ CRYPTO_SHA2_384_HMAC, .digestlen = 48, .keyed = true },
	{ CRYPTO_SHA2_512_HMAC, .digestlen = 64, .keyed = true },
};

static const struct vcd_alg *vcd_alg_find(u32 alg, bool cipher)
{
	unsigned int i;

	for (i = 0; i < ARRAY_SIZE(vcd_algs); i++)
		if (vcd_algs[i].alg == alg && vcd_algs[i].cipher == cipher)
			return &vcd_algs[i];
	return NULL;
}

/* A session's algorithms, as stored in vcd_file.sessions (an xa value). */
#define VCD_SES_VALUE(cipher, mac)	((cipher) | (mac) << 8)
#define VCD_SES_CIPHER(v)		((v) & 0xff)
#define VCD_SES_MAC(v)			(((v) >> 8) & 0xff)

/* An impossible status: a response the device never wrote reads as an error. */
#define VCD_S_UNSET	0xffffffffU

static unsigned int major;
module_param(major, uint, 0444);
MODULE_PARM_DESC(major, "Character device major (0: dynamic, the default; 60: the course's)");

static dev_t vcd_devt;
static struct class *vcd_class;
static DEFINE_IDA(vcd_minor_ida);

struct vcd_device {
	struct virtio_device *vdev;
	struct virtqueue *vq;		/* NULL once removed */
	spinlock_t lock;		/* guards vq and broken */
	bool broken;			/* removed: fail every request */
	bool frozen;			/* suspending: no new requests, answers still come */
	unsigned int epoch;		/* bumped by restore: older files' handles are gone */
	struct dentry *debugfs;
	unsigned long freed;		/* bumped when ring entries come back */
	wait_queue_head_t space_wq;	/* tasks waiting for ring space */
	struct rw_semaphore remove_sem;	/* add+notify vs. del_vqs */
	struct list_head orphans;	/* creations answered after their waiter died */
	struct work_struct orphan_work;
	/*
	 * What was negotiated, cached at probe: an open file may outlive vdev (hot
	 * unplug), so the ioctl paths never read vdev.
	 */
	bool indirect;			/* VIRTIO_RING_F_INDIRECT_DESC */
	bool algs_f;			/* VCD_F_ALGS negotiated */
	bool multipart_f;		/* VCD_F_MULTIPART negotiated */
	bool aead_f;			/* VCD_F_AEAD negotiated */
	bool ordered_f;			/* VCD_F_ORDERED negotiated: async allowed */
	atomic_t nasync;		/* async requests not fetched yet, all files */
	u32 algs[VCD_ALG_BITS / 32];	/* what the device has, by number */
	int minor;
	struct cdev cdev;
	struct device dev;
	struct vcd_stats stats;		/* sysfs: stats/ */
};

/* Crypt requests at least this long use the caller's pages (zero copy). */
#define VCD_ZC_MIN		4096

/*
 * Pages handed to the device as a scatterlist: the caller's own (zero copy), or, for a
 * copy larger than a page, order-0 pages of ours (@owned): a 256 KiB request must not
 * need an order-6 allocation.
 */
struct vcd_pin {
	struct page **pages;
	unsigned int npages;
	bool dirty;			/* the device writes them */
	bool owned;			/* ours to free, not the caller's to unpin */
	struct sg_table sgt;
};

struct vcd_buf {
	void *data;			/* a kernel copy, or NULL when pinned */
	struct vcd_pin *pin;
	u32 len;
	bool sensitive;			/* holds a key: wipe before freeing */
};

/* Arguments of the ioctls, independent of the caller's pointer size. */
struct vcd_sess_args {
	u32 cipher, mac, keylen, mackeylen, ses;
	u8 __user *key;
	u8 __user *mackey;
};

struct vcd_auth_args {
	u32 ses, len, auth_len, tag_len;
	u16 op, flags;
	u8 __user *auth_src;
	u8 __user *src;
	u8 __user *dst;
	u8 __user *tag;			/* out: where the tag is in dst */
	u8 __user *iv;
};

struct vcd_crypt_args {
	u32 ses, len;
	u16 op, flags;
	u8 __user *src;
	u8 __user *dst;
	u8 __user *mac;
	u8 __user *iv;
};

/*
 * Most payload and result buffers of one call: AEAD header + iv + aad + src;
 * dst + IV out + digest.
 */
#define VCD_MAX_OUT	4
#define VCD_MAX_IN	3

/* Where a CRYPT's results go once it is answered. */
struct vcd_crypt_out {
	struct vcd_crypt_args args;	/* the caller's op, for CIOCASYNCFETCH too */
	void *dst;			/* a kernel copy of dst, or NULL */
	struct vcd_pin *dst_pages;	/* pages of ours holding dst, or NULL */
	void *mac;
	void *ivout;
	u32 maclen, ivlen;
};

struct vcd_request {
	refcount_t ref;
	struct completion done;
	struct list_head node;		/* on vcd->orphans */
	struct list_head anode;		/* on vf->async, until fetched */
	wait_queue_head_t *waitq;	/* woken when answered; under vcd->lock */
	int err;			/* -ENODEV if failed by removal */
	bool abandoned;			/* waiter gone; under vcd->lock */
	unsigned int written;		/* bytes the device reported */
	unsigned int in_total;		/* bytes the device must write */
	struct vcd_crypt_out co;
	unsigned int nout, nin;
	struct vcd_buf out[VCD_MAX_OUT];	/* device-readable payload */
	struct vcd_buf in[VCD_MAX_IN];		/* device-writable results */
	struct work_struct free_work;	/* unpinning may sleep: not from the callback */
	struct vcd_req req;
	struct vcd_resp resp ____cacheline_aligned;
};

/*
 * CIOCASYNCCRYPT: requests not fetched yet, per file and per device. cryptodev-linux
 * allows 64 per file; 1,024 lets a client keep the ring full from one file while
 * bounding what it pins and what we copy.
 */
#define VCD_ASYNC_MAX		1024
#define VCD_ASYNC_DEV_MAX	8192

struct vcd_file {
	struct vcd_device *vcd;
	u32 handle;			/* the device's handle for this file */
	unsigned int epoch;		/* vcd->epoch at open */
	struct xarray sessions;		/* session id -> VCD_SES_VALUE() (xa value) */
	atomic_t nsessions;		/* entries in sessions, for the stats */
	/* CIOCASYNCCRYPT requests in submission order, fetched from the head. */
	struct mutex submit_lock;	/* keeps list order and ring order the same */
	spinlock_t alock;		/* guards async and nasync */
	struct list_head async;
	unsigned int nasync;
	wait_queue_head_t async_wq;	/* poll(): answered, or room for more */
};

/* ---- requests ---------------------------------------------------------- */

static struct vcd_request *vcd_req_alloc(u32 type, u32 handle, u32 cmd)
{
	struct vcd_request *r = kzalloc(sizeof(*r), GFP_KERNEL);

	if (!r)
		return NULL;
	refcount_set(&r->ref, 1);
	init_completion(&r->done);
	INIT_LIST_HEAD(&r->node);
	r->req.type = cpu_to_le32(type);
	r->req.handle = cpu_to_le32(handle);
	r->req.cmd = cpu_to_le32(cmd);
	r->resp.status = cpu_to_le32(VCD_S_UNSET);
	return r;
}

static struct workqueue_struct *vcd_free_wq;

static void vcd_unpin(struct vcd_pin *p)
{
	unsigned int i;

	if (p->owned) {
		for (i = 0; i < p->npages; i++)
			__free_page(p->pages[i]);
	} else {
		unpin_user_pages_dirty_lock(p->pages, p->npages, p->dirty);
	}
	sg_free_table(&p->sgt);
	kvfree(p->pages);
	kfree(p);
}

/*
 * Key buffers are wiped. Data buffers are not, as in cryptodev-linux and AF_ALG: under
 * emulation every extra pass over a 64 KiB buffer costs as much as the crypto itself.
 */
static void vcd_req_free(struct vcd_request *r)
{
	unsigned int i;

	for (i = 0; i < r->nout; i++) {
		if (r->out[i].pin)
			vcd_unpin(r->out[i].pin);
		else if (r->out[i].sensitive)
			kfree_sensitive(r->out[i].data);
		else
			kfree(r->out[i].data);
	}
	for (i = 0; i < r->nin; i++) {
		if (r->in[i].pin)
			vcd_unpin(r->in[i].pin);
		else
			kfree(r->in[i].data);
	}
	kfree_sensitive(r);
}

static void vcd_req_free_work(struct work_struct *work)
{
	vcd_req_free(container_of(work, struct vcd_request, free_work));
}

static bool vcd_req_pinned(struct vcd_request *r)
{
	unsigned int i;

	for (i = 0; i < r->nout; i++)
		if (r->out[i].pin)
			return true;
	for (i = 0; i < r->nin; i++)
		if (r->in[i].pin)
			return true;
	return false;
}

/* Safe in any context: unpinning, which may sleep, is deferred from atomic ones. */
static void vcd_req_put(struct vcd_request *r)
{
	if (!refcount_dec_and_test(&r->ref))
		return;
	if (vcd_req_pinned(r) && (irqs_disabled() || !in_task())) {
		INIT_WORK(&r->free_work, vcd_req_free_work);
		queue_work(vcd_free_wq, &r->free_work);
		return;
	}
	vcd_req_free(r);
}

/* Attach a buffer of @len bytes (none if @len is 0); returns it, or an ERR_PTR. */
static void *vcd_req_buf(struct vcd_request *r, bool out, u32 len)
{
	struct vcd_buf *b = out ? &r->out[r->nout] : &r->in[r->nin];
	void *p;

	if (!len)
		return NULL;
	/*
	 * Not zeroed: device-readable buffers are filled from user memory before the
	 * request is queued, and device-writable ones reach user memory only when the
	 * device reported writing all of them (vcd_call checks the used length).
	 */
	p = kmalloc(len, GFP_KERNEL | __GFP_NOWARN);
	if (!p)
		return ERR_PTR(-ENOMEM);
	b->data = p;
	b->len = len;
	if (out)
		r->nout++;
	else
		r->nin++;
	return p;
}

/*
 * Attach the caller's own pages at @uaddr as a buffer (device-readable when @out), so
 * the device reads or writes them directly instead of a kernel copy. -EFAULT when any
 * of it is not mapped (or not writable, for a device-writable buffer).
 */
static int vcd_req_pin(struct vcd_request *r, bool out, const void __user *uaddr, u32 len)
{
	struct vcd_buf *b = out ? &r->out[r->nout] : &r->in[r->nin];
	unsigned long start = (unsigned long)uaddr;
	unsigned int off = offset_in_page(start);
	unsigned int npages = DIV_ROUND_UP(off + len, PAGE_SIZE);
	struct vcd_pin *p;
	int got, err;

	p = kzalloc(sizeof(*p), GFP_KERNEL);
	if (!p)
		return -ENOMEM;
	p->pages = kvmalloc_array(npages, sizeof(*p->pages), GFP_KERNEL);
	if (!p->pages) {
		kfree(p);
		return -ENOMEM;
	}
	got = pin_user_pages_fast(start & PAGE_MASK, npages, out ? 0 : FOLL_WRITE, p->pages);
	if (got > 0)
		p->npages = got;
	err = got == npages ? 0 : -EFAULT;
	if (!err)
		err = sg_alloc_table_from_pages(&p->sgt, p->pages, npages, off, len, GFP_KERNEL);
	if (err) {
		unpin_user_pages(p->pages, p->npages);
		kvfree(p->pages);
		kfree(p);
		return err;
	}
	p->dirty = !out;
	b->pin = p;
	b->len = len;
	if (out)
		r->nout++;
	else
		r->nin++;
	return 0;
}

/*
 * Attach a buffer of @len bytes made of order-0 pages of ours, for copies larger than a
 * page; vcd_pages_copy() moves data between it and user memory.
 */
static struct vcd_pin *vcd_req_pages(struct vcd_request *r, bool out, u32 len)
{
	struct vcd_buf *b = out ? &r->out[r->nout] : &r->in[r->nin];
	unsigned int i, npages = DIV_ROUND_UP(len, PAGE_SIZE);
	struct vcd_pin *p;
	int err = -ENOMEM;

	p = kzalloc(sizeof(*p), GFP_KERNEL);
	if (!p)
		return ERR_PTR(-ENOMEM);
	p->owned = true;
	p->pages = kvmalloc_array(npages, sizeof(*p->pages), GFP_KERNEL);
	if (!p->pages)
		goto fail;
	for (; p->npages < npages; p->npages++) {
		p->pages[p->npages] = alloc_page(GFP_KERNEL);
		if (!p->pages[p->npages])
			goto fail;
	}
	err = sg_alloc_table_from_pages(&p->sgt, p->pages, npages, 0, len, GFP_KERNEL);
	if (err)
		goto fail;
	b->pin = p;
	b->len = len;
	if (out)
		r->nout++;
	else
		r->nin++;
	return p;

fail:
	for (i = 0; i < p->npages; i++)
		__free_page(p->pages[i]);
	kvfree(p->pages);
	kfree(p);
	return ERR_PTR(err);
}

/* Copy @len bytes between user memory and pages of ours; -EFAULT on a bad address. */
static int vcd_pages_copy(struct vcd_pin *p, void __user *uaddr, u32 len, bool to_user)
{
	unsigned int i, n;
	u32 off = 0;

	for (i = 0; off < len; i++, off += n) {
		n = min_t(u32, PAGE_SIZE, len - off);
		if (to_user ? copy_to_user(uaddr + off, page_address(p->pages[i]), n) :
			      copy_from_user(page_address(p->pages[i]), uaddr + off, n))
			return -EFAULT;
	}
	return 0;
}

/* A device-readable buffer filled from user memory; @sensitive for keys. */
static int vcd_req_copy_in(struct vcd_request *r, const void __user *src, u32 len,
			   bool sensitive)
{
	void *p = vcd_req_buf(r, true, len);

	if (IS_ERR(p))
		return PTR_ERR(p);
	if (p)
		r->out[r->nout - 1].sensitive = sensitive;
	if (p && copy_from_user(p, src, len))
		return -EFAULT;
	return 0;
}

static int vcd_status_errno(u32 status)
{
	switch (status) {
	case VCD_S_OK:
		return 0;
	case VCD_S_INVAL:
	case VCD_S_NOSESSION:
		return -EINVAL;
	case VCD_S_NOHANDLE:
		return -EBADF;
	case VCD_S_NOTSUPP:
		return -EOPNOTSUPP;
	case VCD_S_NOMEM:
		return -ENOMEM;
	case VCD_S_LIMIT:
		return -EMFILE;
	case VCD_S_BADTAG:
		return -EBADMSG;
	case VCD_S_BADMSG:
	case VCD_S_ENGINE:
	default:
		return -EIO;
	}
}

/* An OPEN or SESSION_CREATE: what it made must not outlive a waiter that died. */
static bool vcd_creates(struct vcd_request *r)
{
	return le32_to_cpu(r->req.type) == VCD_CALL_OPEN ||
	       (le32_to_cpu(r->req.type) == VCD_CALL_IOCTL &&
		le32_to_cpu(r->req.cmd) == VCD_CMD_SESSION_CREATE);
}

/* Called under vcd->lock: wake the waiter or poller and drop the device's reference. */
static void vcd_req_answered(struct vcd_request *r)
{
	complete(&r->done);
	if (r->waitq)
		wake_up(r->waitq);
	vcd_req_put(r);
}

static void vcd_vq_done(struct virtqueue *vq)
{
	struct vcd_device *vcd = vq->vdev->priv;
	struct vcd_request *r;
	unsigned long flags;
	unsigned int len;
	bool freed = false, orphans = false;

	spin_lock_irqsave(&vcd->lock, flags);
	if (vcd->broken) {
		spin_unlock_irqrestore(&vcd->lock, flags);
		return;
	}
	do {
		virtqueue_disable_cb(vq);
		while ((r = virtqueue_get_buf(vq, &len)) != NULL) {
			freed = true;
			r->written = len;
			vcd_stats_answered(&vcd->stats,
					   le32_to_cpu(r->resp.status) == VCD_S_OK);
			if (r->abandoned && vcd_creates(r) &&
			    le32_to_cpu(r->resp.status) == VCD_S_OK) {
				/* Keep the device's reference for the work item. */
				list_add_tail(&r->node, &vcd->orphans);
				orphans = true;
				continue;
			}
			vcd_req_answered(r);
		}
	} while (!virtqueue_enable_cb(vq));
	if (freed)
		vcd->freed++;
	spin_unlock_irqrestore(&vcd->lock, flags);
	if (freed)
		wake_up_all(&vcd->space_wq);
	if (orphans)
		schedule_work(&vcd->orphan_work);
}

static bool vcd_space_changed(struct vcd_device *vcd, unsigned long seen)
{
	return READ_ONCE(vcd->freed) != seen || READ_ONCE(vcd->broken);
}

/*
 * Put @r on the ring and notify the device, sleeping while the ring is full. Returns 0
 * once the device owns it (it takes a reference of its own), or an errno. With
 * @killable a fatal signal ends the wait (-EINTR).
 */
static int vcd_queue(struct vcd_device *vcd, struct vcd_request *r, bool killable)
{
	struct scatterlist hdr, resp, out[VCD_MAX_OUT], in[VCD_MAX_IN];
	struct scatterlist *sgs[VCD_MAX_OUT + VCD_MAX_IN + 2];
	unsigned int n = 0, i, nents = 2;
	unsigned long seen;
	bool notify = false;
	int err;

	r->in_total = sizeof(r->resp);
	sg_init_one(&hdr, &r->req, sizeof(r->req));
	sgs[n++] = &hdr;
	for (i = 0; i < r->nout; i++) {
		if (r->out[i].pin) {
			sgs[n++] = r->out[i].pin->sgt.sgl;
			nents += r->out[i].pin->sgt.nents;
			continue;
		}
		nents++;
		sg_init_one(&out[i], r->out[i].data, r->out[i].len);
		sgs[n++] = &out[i];
	}
	for (i = 0; i < r->nin; i++) {
		r->in_total += r->in[i].len;
		if (r->in[i].pin) {
			sgs[n++] = r->in[i].pin->sgt.sgl;
			nents += r->in[i].pin->sgt.nents;
			continue;
		}
		nents++;
		sg_init_one(&in[i], r->in[i].data, r->in[i].len);
		sgs[n++] = &in[i];
	}
	sg_init_one(&resp, &r->resp, sizeof(r->resp));
	sgs[n++] = &resp;

	refcount_inc(&r->ref);	/* the device's reference */
	for (;;) {
		if (killable) {
			if (down_read_killable(&vcd->remove_sem))
				goto interrupted;
		} else {
			down_read(&vcd->remove_sem);
		}
		spin_lock_irq(&vcd->lock);
		if (vcd->broken || vcd->frozen) {
			err = -ENODEV;
		} else {
			err = virtqueue_add_sgs(vcd->vq, sgs, 1 + r->nout, r->nin + 1, r,
						GFP_ATOMIC);
			notify = !err && virtqueue_kick_prepare(vcd->vq);
			/*
			 * No room even in an empty ring: a chain longer than the ring whose
			 * indirect table could not be allocated would wait forever. (With
			 * the ring merely full, an indirect chain fits once one entry is
			 * back: wait.)
			 */
			if (err == -ENOSPC && nents > virtqueue_get_vring_size(vcd->vq) &&
			    vcd->vq->num_free == virtqueue_get_vring_size(vcd->vq))
				err = -ENOMEM;
			if (!err)
				atomic_long_inc(&vcd->stats.in_flight);
		}
		seen = vcd->freed;
		spin_unlock_irq(&vcd->lock);
		if (!err && notify)
			virtqueue_notify(vcd->vq);
		up_read(&vcd->remove_sem);
		if (!err)
			return 0;
		if (err != -ENOSPC) {
			refcount_dec(&r->ref);
			return err;
		}
		/* Ring full: sleep until the device hands entries back. */
		if (killable) {
			if (wait_event_killable(vcd->space_wq, vcd_space_changed(vcd, seen)))
				goto interrupted;
		} else {
			wait_event(vcd->space_wq, vcd_space_changed(vcd, seen));
		}
	}

interrupted:
	refcount_dec(&r->ref);
	return -EINTR;
}

/* The transport's verdict on an answered request: 0 when r->resp can be trusted. */
static int vcd_req_result(struct vcd_device *vcd, struct vcd_request *r)
{
	if (r->err)
		return r->err;
	if (le32_to_cpu(r->resp.status) == VCD_S_OK && r->written < r->in_total) {
		dev_warn_ratelimited(&vcd->dev, "short answer: %u of %u bytes\n",
				     r->written, r->in_total);
		return -EIO;
	}
	return 0;
}

/*
 * Send @r and wait for the answer. Returns 0 with r->resp filled, or an errno. With
 * @killable a fatal signal ends the waits (-EINTR); the caller drops its reference
 * in every case.
 */
static int vcd_submit(struct vcd_device *vcd, struct vcd_request *r, bool killable)
{
	bool done;
	int err;

	err = vcd_queue(vcd, r, killable);
	if (err)
		return err;
	if (killable) {
		if (wait_for_completion_killable(&r->done)) {
			/* Answered meanwhile: the answer counts (an OPEN's handle). */
			spin_lock_irq(&vcd->lock);
			done = completion_done(&r->done);
			if (!done)
				r->abandoned = true;
			spin_unlock_irq(&vcd->lock);
			/* The callback or removal drops the device's reference. */
			if (!done)
				return -EINTR;
		}
	} else {
		wait_for_completion(&r->done);
	}
	return vcd_req_result(vcd, r);
}

/* CLOSE a device handle; never interrupted, so the host never keeps it. */
static int vcd_close_handle(struct vcd_device *vcd, u32 handle)
{
	struct vcd_request *r = vcd_req_alloc(VCD_CALL_CLOSE, handle, 0);
	int err;

	if (!r)
		return -ENOMEM;
	err = vcd_submit(vcd, r, false);
	if (!err)
		err = vcd_status_errno(le32_to_cpu(r->resp.status));
	vcd_req_put(r);
	return err;
}

/* SESSION_DESTROY for a session nobody knows of; never interrupted. */
static int vcd_destroy_orphan(struct vcd_device *vcd, u32 handle, u32 ses)
{
	struct vcd_request *r = vcd_req_alloc(VCD_CALL_IOCTL, handle, VCD_CMD_SESSION_DESTROY);
	int err;

	if (!r)
		return -ENOMEM;
	r->req.session = cpu_to_le32(ses);
	err = vcd_submit(vcd, r, false);
	if (!err)
		err = vcd_status_errno(le32_to_cpu(r->resp.status));
	vcd_req_put(r);
	return err;
}

/*
 * Handles and sessions the device created for waiters that were killed: undo them, so
 * that the host holds nothing the guest has forgotten.
 */
static void vcd_orphan_work(struct work_struct *work)
{
	struct vcd_device *vcd = container_of(work, struct vcd_device, orphan_work);
	struct vcd_request *r;
	u32 handle, ses;
	bool open;
	int err;

	for (;;) {
		spin_lock_irq(&vcd->lock);
		r = list_first_entry_or_null(&vcd->orphans, struct vcd_request, node);
		if (r)
			list_del_init(&r->node);
		spin_unlock_irq(&vcd->lock);
		if (!r)
			return;
		open = le32_to_cpu(r->req.type) == VCD_CALL_OPEN;
		handle = open ? le32_to_cpu(r->resp.handle) : le32_to_cpu(r->req.handle);
		ses = le32_to_cpu(r->resp.session);
		complete(&r->done);
		vcd_req_put(r);
		err = open ? vcd_close_handle(vcd, handle) : vcd_destroy_orphan(vcd, handle, ses);
		/* The file may have closed its handle (and its sessions) meanwhile. */
		if (err && err != -ENODEV && err != -EBADF && err != -EINVAL)
			dev_warn(&vcd->dev, "undoing an orphaned %s: %d\n",
				 open ? "handle" : "session", err);
	}
}

/* ---- ioctls ------------------------------------------------------------ */

/* Send an IOCTL request; returns the errno of the call, transport or status. */
static int vcd_call(struct vcd_file *vf, struct vcd_request *r)
{
	int err = vcd_submit(vf->vcd, r, true);

	if (err)
		return err;
	return vcd_status_errno(le32_to_cpu(r->resp.status));
}

static int vcd_destroy_session(struct vcd_file *vf, u32 ses)
{
	struct vcd_request *r;
	int err;

	r = vcd_req_alloc(VCD_CALL_IOCTL, vf->handle, VCD_CMD_SESSION_DESTROY);
	if (!r)
		return -ENOMEM;
	r->req.session = cpu_to_le32(ses);
	err = vcd_call(vf, r);
	vcd_req_put(r);
	return err;
}

/* The algorithm @alg if the device has it: NULL and *err = -EINVAL or -EOPNOTSUPP. */
static const struct vcd_alg *vcd_alg_usable(struct vcd_device *vcd, u32 alg, bool cipher,
					    int *err)
{
	const struct vcd_alg *info = vcd_alg_find(alg, cipher);

	/*
	 * A number cryptodev-linux defines that this driver does not serve is
	 * -EOPNOTSUPP; an unknown number, or a MAC given as a cipher, -EINVAL.
	 */
	*err = -EINVAL;
	if (!info) {
		if (!vcd_alg_find(alg, !cipher) &&
		    ((alg >= CRYPTO_DES_CBC && alg <= CRYPTO_AES_ECB) || alg == CRYPTO_AES_GCM ||
		     (alg >= CRYPTO_CAMELLIA_CBC && alg < CRYPTO_ALGORITHM_ALL)))
			*err = -EOPNOTSUPP;
		return NULL;
	}
	/* Known, but this device (or its protocol version) lacks it. */
	*err = -EOPNOTSUPP;
	if (alg >= VCD_ALG_BITS || !(vcd->algs[alg / 32] & BIT(alg % 32)))
		return NULL;
	return info;
}

static int vcd_create_session(struct vcd_file *vf, struct vcd_sess_args *a)
{
	const struct vcd_alg *calg = NULL, *malg = NULL;
	struct vcd_request *r;
	unsigned int i;
	int err;

	if (!a->cipher && !a->mac)
		return -EINVAL;
	/* As cryptodev-linux: the key lengths of an absent algorithm are ignored. */
	if (a->cipher) {
		calg = vcd_alg_usable(vf->vcd, a->cipher, true, &err);
		if (!calg)
			return err;
		for (i = 0; i < ARRAY_SIZE(calg->keylens); i++)
			if (calg->keylens[i] && a->keylen == calg->keylens[i])
				break;
		if (i == ARRAY_SIZE(calg->keylens))
			return -EINVAL;
	} else {
		a->keylen = 0;
	}
	if (calg && calg->aead && a->mac)
		return -EINVAL;		/* GCM authenticates by itself */
	if (a->mac) {
		malg = vcd_alg_usable(vf->vcd, a->mac, false, &err);
		if (!malg)
			return err;
		if (!malg->keyed)
			a->mackeylen = 0;	/* a plain hash ignores the key */
		else if (a->mackeylen > CRYPTO_HMAC_MAX_KEY_LEN)
			return -EINVAL;
	} else {
		a->mackeylen = 0;
	}

	r = vcd_req_alloc(VCD_CALL_IOCTL, vf->handle, VCD_CMD_SESSION_CREATE);
	if (!r)
		return -ENOMEM;
	r->req.cipher = cpu_to_le32(a->cipher);
	r->req.mac = cpu_to_le32(a->mac);
	r->req.keylen = cpu_to_le32(a->keylen);
	r->req.mackeylen = cpu_to_le32(a->mackeylen);
	err = vcd_req_copy_in(r, a->key, a->keylen, true);
	if (!err)
		err = vcd_req_copy_in(r, a->mackey, a->mackeylen, true);
	if (!err)
		err = vcd_call(vf, r);
	if (!err) {
		a->ses = le32_to_cpu(r->resp.session);
		err = xa_insert(&vf->sessions, a->ses,
				xa_mk_value(VCD_SES_VALUE(a->cipher, a->mac)), GFP_KERNEL);
		if (err) {
			/* -EBUSY: the device reused a live id. */
			vcd_destroy_session(vf, a->ses);
			err = err == -EBUSY ? -EIO : err;
		}
	}
	vcd_req_put(r);
	if (!err) {
		atomic_inc(&vf->nsessions);
		atomic_long_inc(&vf->vcd->stats.sessions);
	}
	return err;
}

static int vcd_free_session(struct vcd_file *vf, u32 ses)
{
	int err;

	if (!xa_load(&vf->sessions, ses))
		return -EINVAL;
	err = vcd_destroy_session(vf, ses);
	/* Unknown to the device too: forget it here as well. */
	if (!err || err == -EINVAL) {
		if (xa_erase(&vf->sessions, ses)) {
			atomic_dec(&vf->nsessions);
			atomic_long_dec(&vf->vcd->stats.sessions);
		}
	}
	return err;
}

/*
 * cryptodev-linux's multi-part hashing, as flags for the device: a hash restarts with
 * RESET or when neither UPDATE nor FINAL is given (a one-shot), and is output with
 * FINAL, without UPDATE, or on an empty operation.
 */
static u16 vcd_hash_flags(u16 flags, u32 len)
{
	u16 wire = 0;

	if ((flags & COP_FLAG_RESET) || !(flags & (COP_FLAG_UPDATE | COP_FLAG_FINAL)))
		wire |= VCD_CF_HASH_RESET;
	if ((flags & COP_FLAG_FINAL) || !(flags & COP_FLAG_UPDATE) || !len)
		wire |= VCD_CF_HASH_FINAL;
	return wire;
}

/*
 * Build the CRYPT request for @a in *@rp (the caller drops it). @async: the caller does
 * not wait, so data of VCD_ZC_MIN bytes or more is always the caller's own pages, in
 * place too (two pins of the same pages, one read and one written: the device copies
 * src before it writes dst), and COP_FLAG_NO_ZC is refused as cryptodev-linux does.
 */
static int vcd_crypt_prepare(struct vcd_file *vf, const struct vcd_crypt_args *a,
			     bool async, struct vcd_request **rp)
{
	struct vcd_device *vcd = vf->vcd;
	const struct vcd_alg *calg = NULL, *malg = NULL;
	struct vcd_crypt_out *co;
	struct vcd_request *r;
	struct vcd_pin *pages;
	void *entry, *iv;
	unsigned long v;
	u32 ivlen = 0;
	u16 wire = 0;
	bool zc;
	int err;

	*rp = NULL;
	if (a->op != COP_ENCRYPT && a->op != COP_DECRYPT)
		return -EINVAL;
	if (a->flags & ~(COP_FLAG_UPDATE | COP_FLAG_FINAL | COP_FLAG_RESET |
			 COP_FLAG_WRITE_IV | COP_FLAG_NO_ZC))
		return -EINVAL;
	if (async && (a->flags & COP_FLAG_NO_ZC))
		return -EINVAL;
	if (a->len > VCD_MAX_DATA_LEN)
		return -EINVAL;
	entry = xa_load(&vf->sessions, a->ses);
	if (!entry)
		return -EINVAL;
	v = xa_to_value(entry);
	if (VCD_SES_CIPHER(v))
		calg = vcd_alg_find(VCD_SES_CIPHER(v), true);
	if (VCD_SES_MAC(v))
		malg = vcd_alg_find(VCD_SES_MAC(v), false);
	if (calg && (calg->aead || a->len % calg->blocklen))
		return -EINVAL;		/* AEAD sessions take CIOCAUTHCRYPT */
	/* cryptodev-linux: no IV (or an ECB session) keeps the session's chained IV. */
	if (calg && calg->ivlen && a->iv)
		ivlen = calg->ivlen;
	if (malg)
		wire |= vcd_hash_flags(a->flags, a->len);
	if (ivlen && (a->flags & COP_FLAG_WRITE_IV))
		wire |= VCD_CF_IV_OUT;
	/* A device without discovery has explicit IVs and one-shot MACs only. */
	if (!vcd->algs_f && ((calg && !ivlen) || (wire & VCD_CF_IV_OUT)))
		return -EOPNOTSUPP;
	if (malg && !vcd->multipart_f &&
	    (wire & (VCD_CF_HASH_RESET | VCD_CF_HASH_FINAL)) !=
	    (VCD_CF_HASH_RESET | VCD_CF_HASH_FINAL))
		return -EOPNOTSUPP;

	r = vcd_req_alloc(VCD_CALL_IOCTL, vf->handle, VCD_CMD_CRYPT);
	if (!r)
		return -ENOMEM;
	*rp = r;
	co = &r->co;
	co->args = *a;
	r->req.session = cpu_to_le32(a->ses);
	r->req.op = cpu_to_le16(a->op);
	/* The first protocol version takes no flags: its MACs are one-shot. */
	r->req.flags = cpu_to_le16(vcd->algs_f ? wire : 0);
	r->req.len = cpu_to_le32(a->len);
	r->req.ivlen = cpu_to_le32(ivlen);
	if (ivlen) {
		iv = vcd_req_buf(r, true, ivlen);
		if (IS_ERR(iv))
			return PTR_ERR(iv);
		if (copy_from_user(iv, a->iv, ivlen))
			return -EFAULT;
	}
	/*
	 * Large requests use the caller's pages directly, as cryptodev-linux does: copies
	 * cost more than the crypto. Not with NO_ZC, nor in place when we wait (one copy
	 * each way costs less than pinning twice), nor without indirect descriptors (a
	 * page per entry would not fit the ring).
	 */
	zc = a->len >= VCD_ZC_MIN && !(a->flags & COP_FLAG_NO_ZC) &&
	     (async || a->src != a->dst) && vcd->indirect;
	if (zc) {
		err = vcd_req_pin(r, true, a->src, a->len);
	} else if (a->len > PAGE_SIZE) {
		pages = vcd_req_pages(r, true, a->len);
		err = PTR_ERR_OR_ZERO(pages);
		if (!err)
			err = vcd_pages_copy(pages, a->src, a->len, false);
	} else {
		err = vcd_req_copy_in(r, a->src, a->len, false);
	}
	if (err)
		return err;
	if (calg) {
		if (zc) {
			err = vcd_req_pin(r, false, a->dst, a->len);
		} else if (a->len > PAGE_SIZE) {
			pages = vcd_req_pages(r, false, a->len);
			err = PTR_ERR_OR_ZERO(pages);
			if (!err)
				co->dst_pages = pages;
		} else {
			co->dst = vcd_req_buf(r, false, a->len);
			err = PTR_ERR_OR_ZERO(co->dst);
			if (err)
				co->dst = NULL;
		}
		if (err)
			return err;
	}
	if (wire & VCD_CF_IV_OUT) {
		co->ivout = vcd_req_buf(r, false, ivlen);
		if (IS_ERR(co->ivout)) {
			err = PTR_ERR(co->ivout);
			co->ivout = NULL;
			return err;
		}
		co->ivlen = ivlen;
	}
	if (wire & VCD_CF_HASH_FINAL) {
		co->mac = vcd_req_buf(r, false, malg->digestlen);
		if (IS_ERR(co->mac)) {
			err = PTR_ERR(co->mac);
			co->mac = NULL;
			return err;
		}
		co->maclen = malg->digestlen;
	}
	return 0;
}

/* Copy an answered CRYPT's results to the caller: what the device did not write there. */
static int vcd_crypt_output(struct vcd_request *r)
{
	const struct vcd_crypt_out *co = &r->co;

	if (co->dst && copy_to_user(co->args.dst, co->dst, co->args.len))
		return -EFAULT;
	if (co->dst_pages && vcd_pages_copy(co->dst_pages, co->args.dst, co->args.len, true))
		return -EFAULT;
	if (co->mac && copy_to_user(co->args.mac, co->mac, co->maclen))
		return -EFAULT;
	if (co->ivout && copy_to_user(co->args.iv, co->ivout, co->ivlen))
		return -EFAULT;
	return 0;
}

static int vcd_crypt(struct vcd_file *vf, struct vcd_crypt_args *a)
{
	struct vcd_request *r;
	int err;

	err = vcd_crypt_prepare(vf, a, false, &r);
	if (!err)
		err = vcd_call(vf, r);
	if (!err)
		err = vcd_crypt_output(r);
	if (r)
		vcd_req_put(r);
	return err;
}

/*
 * CIOCASYNCCRYPT: queue the CRYPT and return; CIOCASYNCFETCH collects it. -EBUSY when
 * the file (or the device) has too many not fetched yet, as cryptodev-linux answers a
 * full queue; a device that may reorder a session's requests is refused.
 */
static int vcd_async_crypt(struct vcd_file *vf, const struct vcd_crypt_args *a)
{
	struct vcd_device *vcd = vf->vcd;
	struct vcd_request *r;
	int err;

	if (!vcd->ordered_f)
		return -EOPNOTSUPP;
	spin_lock(&vf->alock);
	err = vf->nasync >= VCD_ASYNC_MAX ? -EBUSY : 0;
	if (!err)
		vf->nasync++;
	spin_unlock(&vf->alock);
	if (err)
		return err;
	if (atomic_inc_return(&vcd->nasync) > VCD_ASYNC_DEV_MAX) {
		err = -EBUSY;
		goto out_budget;
	}
	err = vcd_crypt_prepare(vf, a, true, &r);
	if (err)
		goto out_put;
	r->waitq = &vf->async_wq;
	if (mutex_lock_killable(&vf->submit_lock)) {
		err = -EINTR;
		goto out_put;
	}
	err = vcd_queue(vcd, r, true);
	if (!err) {
		/* The file's reference now; the device holds its own. */
		spin_lock(&vf->alock);
		list_add_tail(&r->anode, &vf->async);
		spin_unlock(&vf->alock);
	}
	mutex_unlock(&vf->submit_lock);
	if (!err)
		return 0;
out_put:
	if (r)
		vcd_req_put(r);
out_budget:
	atomic_dec(&vcd->nasync);
	spin_lock(&vf->alock);
	vf->nasync--;
	spin_unlock(&vf->alock);
	wake_up(&vf->async_wq);
	return err;
}

/*
 * CIOCASYNCFETCH: the oldest request, once answered (cryptodev-linux runs a file's
 * requests one after another, so its results come back in submission order; so do
 * ours). -EBUSY when it is not answered yet. Its error, or its results written back
 * and @a filled with the op as submitted.
 */
static int vcd_async_fetch(struct vcd_file *vf, struct vcd_crypt_args *a)
{
	struct vcd_device *vcd = vf->vcd;
	struct vcd_request *r;
	int err;

	spin_lock(&vf->alock);
	r = list_first_entry_or_null(&vf->async, struct vcd_request, anode);
	if (r && completion_done(&r->done)) {
		list_del_init(&r->anode);
		vf->nasync--;
	} else {
		r = NULL;
	}
	spin_unlock(&vf->alock);
	if (!r)
		return -EBUSY;
	atomic_dec(&vcd->nasync);
	wake_up(&vf->async_wq);		/* room for one more */

	err = vcd_req_result(vcd, r);
	if (!err)
		err = vcd_status_errno(le32_to_cpu(r->resp.status));
	if (!err)
		err = vcd_crypt_output(r);
	if (!err)
		*a = r->co.args;
	vcd_req_put(r);
	return err;
}

static __poll_t vcd_poll(struct file *filp, poll_table *wait)
{
	struct vcd_file *vf = filp->private_data;
	struct vcd_request *r;
	__poll_t mask = 0;

	poll_wait(filp, &vf->async_wq, wait);
	spin_lock(&vf->alock);
	r = list_first_entry_or_null(&vf->async, struct vcd_request, anode);
	if (r && completion_done(&r->done))
		mask |= EPOLLIN | EPOLLRDNORM;
	if (vf->nasync < VCD_ASYNC_MAX)
		mask |= EPOLLOUT | EPOLLWRNORM;
	spin_unlock(&vf->alock);
	return mask;
}

/*
 * Release: requests never fetched are the device's to finish; nobody is woken for
 * them. Their buffers (pinned pages included) go with the device's reference.
 */
static void vcd_async_drop(struct vcd_file *vf)
{
	struct vcd_device *vcd = vf->vcd;
	struct vcd_request *r, *tmp;
	LIST_HEAD(gone);

	spin_lock(&vf->alock);
	list_splice_init(&vf->async, &gone);
	vf->nasync = 0;
	spin_unlock(&vf->alock);
	list_for_each_entry_safe(r, tmp, &gone, anode) {
		spin_lock_irq(&vcd->lock);
		r->waitq = NULL;
		spin_unlock_irq(&vcd->lock);
		list_del_init(&r->anode);
		atomic_dec(&vcd->nasync);
		vcd_req_put(r);
	}
}

/* A device-readable buffer of user data: order-0 pages when larger than a page. */
static int vcd_req_data_in(struct vcd_request *r, const void __user *src, u32 len)
{
	struct vcd_pin *pages;

	if (len <= PAGE_SIZE)
		return vcd_req_copy_in(r, src, len, false);
	pages = vcd_req_pages(r, true, len);
	if (IS_ERR(pages))
		return PTR_ERR(pages);
	return vcd_pages_copy(pages, (void __user *)src, len, false);
}

/*
 * CIOCAUTHCRYPT with AES-GCM, cryptodev-linux's layout: see struct crypt_auth_op. A tag
 * that does not match is -EBADMSG and nothing is written. The TLS and SRTP types (CBC
 * plus HMAC records) are not offered.
 */
static int vcd_authcrypt(struct vcd_file *vf, struct vcd_auth_args *a)
{
	const struct vcd_alg *calg = NULL;
	struct vcd_pin *dst_pages = NULL;
	struct vcd_request *r;
	struct vcd_aead *hdr;
	void *entry, *iv, *dst = NULL;
	u32 dst_len;
	int err;

	if (a->flags & (COP_FLAG_AEAD_TLS_TYPE | COP_FLAG_AEAD_SRTP_TYPE))
		return -EOPNOTSUPP;
	if (a->op != COP_ENCRYPT && a->op != COP_DECRYPT)
		return -EINVAL;
	entry = xa_load(&vf->sessions, a->ses);
	if (!entry)
		return -EINVAL;
	if (VCD_SES_CIPHER(xa_to_value(entry)))
		calg = vcd_alg_find(VCD_SES_CIPHER(xa_to_value(entry)), true);
	/* A GCM IV is never taken from the previous operation: reuse breaks GCM. */
	if (!calg || !calg->aead || !a->iv)
		return -EINVAL;
	if (!a->tag_len)
		a->tag_len = VCD_GCM_TAG_LEN;
	if (a->tag_len > VCD_GCM_TAG_LEN || a->auth_len > VCD_MAX_AAD_LEN ||
	    a->len > VCD_MAX_DATA_LEN || (a->op == COP_DECRYPT && a->len < a->tag_len))
		return -EINVAL;
	dst_len = a->op == COP_ENCRYPT ? a->len + a->tag_len : a->len - a->tag_len;

	r = vcd_req_alloc(VCD_CALL_IOCTL, vf->handle, VCD_CMD_AUTHCRYPT);
	if (!r)
		return -ENOMEM;
	r->req.session = cpu_to_le32(a->ses);
	r->req.op = cpu_to_le16(a->op);
	r->req.len = cpu_to_le32(a->len);
	r->req.ivlen = cpu_to_le32(VCD_GCM_IV_LEN);
	hdr = vcd_req_buf(r, true, sizeof(*hdr));
	err = PTR_ERR_OR_ZERO(hdr);
	if (err)
		goto out;
	memset(hdr, 0, sizeof(*hdr));
	hdr->auth_len = cpu_to_le32(a->auth_len);
	hdr->tag_len = cpu_to_le32(a->tag_len);
	iv = vcd_req_buf(r, true, VCD_GCM_IV_LEN);
	err = PTR_ERR_OR_ZERO(iv);
	if (!err && copy_from_user(iv, a->iv, VCD_GCM_IV_LEN))
		err = -EFAULT;
	if (!err)
		err = vcd_req_copy_in(r, a->auth_src, a->auth_len, false);
	if (!err)
		err = vcd_req_data_in(r, a->src, a->len);
	if (err)
		goto out;
	if (dst_len > PAGE_SIZE) {
		dst_pages = vcd_req_pages(r, false, dst_len);
		err = PTR_ERR_OR_ZERO(dst_pages);
		if (err)
			dst_pages = NULL;
	} else if (dst_len) {
		dst = vcd_req_buf(r, false, dst_len);
		err = PTR_ERR_OR_ZERO(dst);
		if (err)
			dst = NULL;
	}
	if (!err)
		err = vcd_call(vf, r);
	if (err)
		goto out;
	if (dst && copy_to_user(a->dst, dst, dst_len))
		err = -EFAULT;
	else if (dst_pages && vcd_pages_copy(dst_pages, a->dst, dst_len, true))
		err = -EFAULT;
	a->tag = a->dst + (a->op == COP_ENCRYPT ? a->len : dst_len);
	a->len = dst_len;
out:
	vcd_req_put(r);
	return err;
}

/* CIOCCPHASH: the hash state of one session becomes a copy of another's. */
static int vcd_copy_hash(struct vcd_file *vf, void __user *argp)
{
	struct cphash_op op;
	struct vcd_request *r;
	void *dst, *src;
	int err;

	if (copy_from_user(&op, argp, sizeof(op)))
		return -EFAULT;
	dst = xa_load(&vf->sessions, op.dst_ses);
	src = xa_load(&vf->sessions, op.src_ses);
	if (!dst || !src)
		return -EINVAL;
	if (!vf->vcd->multipart_f)
		return -EOPNOTSUPP;
	r = vcd_req_alloc(VCD_CALL_IOCTL, vf->handle, VCD_CMD_HASH_COPY);
	if (!r)
		return -ENOMEM;
	r->req.session = cpu_to_le32(op.dst_ses);
	r->req.session2 = cpu_to_le32(op.src_ses);
	err = vcd_call(vf, r);
	vcd_req_put(r);
	return err;
}

static void vcd_copy_name(char *to, const char *from)
{
	memcpy(to, from, VCD_NAME_LEN);
	to[CRYPTODEV_MAX_ALG_NAME - 1] = '\0';
}

static int vcd_session_info(struct vcd_file *vf, void __user *argp)
{
	struct session_info_op *op;
	struct vcd_session_info *info;
	struct vcd_request *r;
	int err;

	op = kzalloc(sizeof(*op), GFP_KERNEL);
	if (!op)
		return -ENOMEM;
	if (get_user(op->ses, (u32 __user *)argp)) {
		err = -EFAULT;
		goto out_op;
	}
	if (!xa_load(&vf->sessions, op->ses)) {
		err = -EINVAL;
		goto out_op;
	}
	r = vcd_req_alloc(VCD_CALL_IOCTL, vf->handle, VCD_CMD_SESSION_INFO);
	if (!r) {
		err = -ENOMEM;
		goto out_op;
	}
	r->req.session = cpu_to_le32(op->ses);
	info = vcd_req_buf(r, false, sizeof(*info));
	err = PTR_ERR_OR_ZERO(info);
	if (!err)
		err = vcd_call(vf, r);
	if (!err) {
		BUILD_BUG_ON(VCD_NAME_LEN != CRYPTODEV_MAX_ALG_NAME);
		vcd_copy_name(op->cipher_info.cra_name, info->cipher_name);
		vcd_copy_name(op->cipher_info.cra_driver_name, info->cipher_driver);
		vcd_copy_name(op->hash_info.cra_name, info->mac_name);
		vcd_copy_name(op->hash_info.cra_driver_name, info->mac_driver);
		op->alignmask = (u16)le32_to_cpu(info->alignmask);
		op->flags = le32_to_cpu(info->flags) & SIOP_FLAG_KERNEL_DRIVER_ONLY;
		if (copy_to_user(argp, op, sizeof(*op)))
			err = -EFAULT;
	}
	vcd_req_put(r);
out_op:
	kfree(op);
	return err;
}

/* CRIOGET: like cryptodev-linux, a second descriptor for the same open file. */
static int vcd_crioget(struct file *filp, u32 __user *argp)
{
	int fd = get_unused_fd_flags(O_CLOEXEC);

	if (fd < 0)
		return fd;
	if (put_user(fd, argp)) {
		put_unused_fd(fd);
		return -EFAULT;
	}
	fd_install(fd, get_file(filp));
	return 0;
}

/*
 * A file opened before a suspend: the reset dropped its handle, whose number a newer
 * file may hold by now, so nothing of this file reaches the device again.
 */
static bool vcd_file_stale(struct vcd_file *vf)
{
	return vf->epoch != READ_ONCE(vf->vcd->epoch);
}

static long vcd_ioctl(struct file *filp, unsigned int cmd, unsigned long arg)
{
	struct vcd_file *vf = filp->private_data;
	void __user *argp = (void __user *)arg;
	struct crypt_auth_op caop;
	struct vcd_auth_args aa;
	struct vcd_crypt_args ca;
	struct vcd_sess_args sa;
	struct session_op sop;
	struct crypt_op cop;
	u32 ses;
	long err;

	/* Results queued before the suspend may still be fetched (they failed). */
	if (cmd != CIOCASYNCFETCH && vcd_file_stale(vf))
		return -EBADF;
	switch (cmd) {
	case CIOCGSESSION:
		if (copy_from_user(&sop, argp, sizeof(sop)))
			return -EFAULT;
		sa = (struct vcd_sess_args){
			.cipher = sop.cipher, .mac = sop.mac,
			.keylen = sop.keylen, .mackeylen = sop.mackeylen,
			.key = sop.key, .mackey = sop.mackey,
		};
		err = vcd_create_session(vf, &sa);
		if (err)
			return err;
		sop.ses = sa.ses;
		if (copy_to_user(argp, &sop, sizeof(sop))) {
			vcd_free_session(vf, sa.ses);
			return -EFAULT;
		}
		return 0;
	case CIOCFSESSION:
		if (get_user(ses, (u32 __user *)argp))
			return -EFAULT;
		return vcd_free_session(vf, ses);
	case CIOCCRYPT:
	case CIOCASYNCCRYPT:
		if (copy_from_user(&cop, argp, sizeof(cop)))
			return -EFAULT;
		ca = (struct vcd_crypt_args){
			.ses = cop.ses, .op = cop.op, .flags = cop.flags, .len = cop.len,
			.src = cop.src, .dst = cop.dst, .mac = cop.mac, .iv = cop.iv,
		};
		if (cmd == CIOCASYNCCRYPT)
			return vcd_async_crypt(vf, &ca);
		return vcd_crypt(vf, &ca);
	case CIOCASYNCFETCH:
		err = vcd_async_fetch(vf, &ca);
		if (err)
			return err;
		/* As cryptodev-linux: the op as it was submitted (padding zeroed). */
		memset(&cop, 0, sizeof(cop));
		cop.ses = ca.ses;
		cop.op = ca.op;
		cop.flags = ca.flags;
		cop.len = ca.len;
		cop.src = ca.src;
		cop.dst = ca.dst;
		cop.mac = ca.mac;
		cop.iv = ca.iv;
		return copy_to_user(argp, &cop, sizeof(cop)) ? -EFAULT : 0;
	case CIOCGSESSINFO:
		return vcd_session_info(vf, argp);
	case CRIOGET:
		return vcd_crioget(filp, argp);
	case CIOCCPHASH:
		return vcd_copy_hash(vf, argp);
	case CIOCASYMFEAT:
		/* No asymmetric crypto, as cryptodev-linux answers today. */
		return put_user(0, (u32 __user *)argp);
	case CIOCAUTHCRYPT:
		if (copy_from_user(&caop, argp, sizeof(caop)))
			return -EFAULT;
		aa = (struct vcd_auth_args){
			.ses = caop.ses, .op = caop.op, .flags = caop.flags, .len = caop.len,
			.auth_len = caop.auth_len, .tag_len = caop.tag_len,
			.auth_src = caop.auth_src, .src = caop.src, .dst = caop.dst, .iv = caop.iv,
		};
		err = vcd_authcrypt(vf, &aa);
		if (err)
			return err;
		/* As cryptodev-linux: the bytes written and where the tag is. */
		caop.len = aa.len;
		caop.tag_len = aa.tag_len;
		caop.tag = aa.tag;
		return copy_to_user(argp, &caop, sizeof(caop)) ? -EFAULT : 0;
	default:
		return -ENOTTY;
	}
}

#ifdef CONFIG_COMPAT
/* 32-bit userspace: the same structs with 32-bit pointers, so other ioctl numbers. */
struct compat_session_op {
	u32 cipher;
	u32 mac;
	u32 keylen;
	compat_uptr_t key;
	u32 mackeylen;
	compat_uptr_t mackey;
	u32 ses;
};

struct compat_crypt_op {
	u32 ses;
	u16 op;
	u16 flags;
	u32 len;
	compat_uptr_t src, dst, mac, iv;
};

struct compat_crypt_auth_op {
	u32 ses;
	u16 op;
	u16 flags;
	u32 len;
	u32 auth_len;
	compat_uptr_t auth_src, src, dst, tag;
	u32 tag_len;
	compat_uptr_t iv;
	u32 iv_len;
};

#define COMPAT_CIOCGSESSION	_IOWR('c', 102, struct compat_session_op)
#define COMPAT_CIOCCRYPT	_IOWR('c', 104, struct compat_crypt_op)
#define COMPAT_CIOCAUTHCRYPT	_IOWR('c', 109, struct compat_crypt_auth_op)
#define COMPAT_CIOCASYNCCRYPT	_IOW('c', 110, struct compat_crypt_op)
#define COMPAT_CIOCASYNCFETCH	_IOR('c', 111, struct compat_crypt_op)

static long vcd_compat_ioctl(struct file *filp, unsigned int cmd, unsigned long arg)
{
	struct vcd_file *vf = filp->private_data;
	void __user *argp = compat_ptr(arg);
	struct compat_crypt_auth_op caop;
	struct compat_session_op sop;
	struct compat_crypt_op cop;
	struct vcd_auth_args aa;
	struct vcd_crypt_args ca;
	struct vcd_sess_args sa;
	long err;

	if (cmd != COMPAT_CIOCASYNCFETCH && vcd_file_stale(vf))
		return -EBADF;
	switch (cmd) {
	case COMPAT_CIOCGSESSION:
		if (copy_from_user(&sop, argp, sizeof(sop)))
			return -EFAULT;
		sa = (struct vcd_sess_args){
			.cipher = sop.cipher, .mac = sop.mac,
			.keylen = sop.keylen, .mackeylen = sop.mackeylen,
			.key = compat_ptr(sop.key), .mackey = compat_ptr(sop.mackey),
		};
		err = vcd_create_session(vf, &sa);
		if (err)
			return err;
		sop.ses = sa.ses;
		if (copy_to_user(argp, &sop, sizeof(sop))) {
			vcd_free_session(vf, sa.ses);
			return -EFAULT;
		}
		return 0;
	case COMPAT_CIOCCRYPT:
	case COMPAT_CIOCASYNCCRYPT:
		if (copy_from_user(&cop, argp, sizeof(cop)))
			return -EFAULT;
		ca = (struct vcd_crypt_args){
			.ses = cop.ses, .op = cop.op, .flags = cop.flags, .len = cop.len,
			.src = compat_ptr(cop.src), .dst = compat_ptr(cop.dst),
			.mac = compat_ptr(cop.mac), .iv = compat_ptr(cop.iv),
		};
		if (cmd == COMPAT_CIOCASYNCCRYPT)
			return vcd_async_crypt(vf, &ca);
		return vcd_crypt(vf, &ca);
	case COMPAT_CIOCASYNCFETCH:
		err = vcd_async_fetch(vf, &ca);
		if (err)
			return err;
		memset(&cop, 0, sizeof(cop));
		cop.ses = ca.ses;
		cop.op = ca.op;
		cop.flags = ca.flags;
		cop.len = ca.len;
		cop.src = ptr_to_compat(ca.src);
		cop.dst = ptr_to_compat(ca.dst);
		cop.mac = ptr_to_compat(ca.mac);
		cop.iv = ptr_to_compat(ca.iv);
		return copy_to_user(argp, &cop, sizeof(cop)) ? -EFAULT : 0;
	case COMPAT_CIOCAUTHCRYPT:
		if (copy_from_user(&caop, argp, sizeof(caop)))
			return -EFAULT;
		aa = (struct vcd_auth_args){
			.ses = caop.ses, .op = caop.op, .flags = caop.flags, .len = caop.len,
			.auth_len = caop.auth_len, .tag_len = caop.tag_len,
			.auth_src = compat_ptr(caop.auth_src), .src = compat_ptr(caop.src),
			.dst = compat_ptr(caop.dst), .iv = compat_ptr(caop.iv),
		};
		err = vcd_authcrypt(vf, &aa);
		if (err)
			return err;
		caop.len = aa.len;
		caop.tag_len = aa.tag_len;
		caop.tag = ptr_to_compat(aa.tag);
		return copy_to_user(argp, &caop, sizeof(caop)) ? -EFAULT : 0;
	case CIOCFSESSION:
	case CIOCGSESSINFO:
	case CRIOGET:
	case CIOCCPHASH:
	case CIOCASYMFEAT:
		/* Same layout for 32- and 64-bit callers. */
		return vcd_ioctl(filp, cmd, (unsigned long)argp);
	default:
		return -ENOTTY;
	}
}
#endif

/* ---- file operations --------------------------------------------------- */

static int vcd_open(struct inode *inode, struct file *filp)
{
	struct vcd_device *vcd = container_of(inode->i_cdev, struct vcd_device, cdev);
	struct vcd_request *r;
	struct vcd_file *vf;
	int err;

	vf = kzalloc(sizeof(*vf), GFP_KERNEL);
	if (!vf)
		return -ENOMEM;
	vf->vcd = vcd;
	vf->epoch = READ_ONCE(vcd->epoch);
	xa_init(&vf->sessions);
	mutex_init(&vf->submit_lock);
	spin_lock_init(&vf->alock);
	INIT_LIST_HEAD(&vf->async);
	init_waitqueue_head(&vf->async_wq);

	r = vcd_req_alloc(VCD_CALL_OPEN, 0, 0);
	if (!r) {
		err = -ENOMEM;
		goto out_free;
	}
	err = vcd_submit(vcd, r, true);
	if (!err)
		err = vcd_status_errno(le32_to_cpu(r->resp.status));
	if (!err)
		vf->handle = le32_to_cpu(r->resp.handle);
	vcd_req_put(r);
	if (err)
		goto out_free;
	filp->private_data = vf;
	atomic_long_inc(&vcd->stats.open_files);
	return nonseekable_open(inode, filp);

out_free:
	kfree(vf);
	return err;
}

static int vcd_release(struct inode *inode, struct file *filp)
{
	struct vcd_file *vf = filp->private_data;
	int err;

	vcd_async_drop(vf);
	/* The device drops the handle's sessions with it (after its queued requests). */
	err = vcd_file_stale(vf) ? 0 : vcd_close_handle(vf->vcd, vf->handle);
	if (err && err != -ENODEV)
		dev_warn_ratelimited(&vf->vcd->dev, "closing handle %u failed: %d\n",
				     vf->handle, err);
	atomic_long_sub(atomic_read(&vf->nsessions), &vf->vcd->stats.sessions);
	atomic_long_dec(&vf->vcd->stats.open_files);
	xa_destroy(&vf->sessions);
	kfree(vf);
	return 0;
}

static const struct file_operations vcd_fops = {
	.owner = THIS_MODULE,
	.open = vcd_open,
	.release = vcd_release,
	.unlocked_ioctl = vcd_ioctl,
	.poll = vcd_poll,
#ifdef CONFIG_COMPAT
	.compat_ioctl = vcd_compat_ioctl,
#endif
};

/* ---- virtio driver ----------------------------------------------------- */

static void vcd_dev_release(struct device *dev)
{
	kfree(container_of(dev, struct vcd_device, dev));
}

/*
 * What the device offers: its config space with VCD_F_ALGS, else the first protocol
 * version's two algorithms (an older device).
 */
static void vcd_discover(struct vcd_device *vcd)
{
	struct virtio_device *vdev = vcd->vdev;
	struct vcd_config cfg;
	unsigned int i;

	BUILD_BUG_ON(sizeof(cfg) != 32);
	vcd->indirect = virtio_has_feature(vdev, VIRTIO_RING_F_INDIRECT_DESC);
	vcd->algs_f = virtio_has_feature(vdev, VCD_F_ALGS);
	vcd->multipart_f = vcd->algs_f && virtio_has_feature(vdev, VCD_F_MULTIPART);
	vcd->aead_f = vcd->algs_f && virtio_has_feature(vdev, VCD_F_AEAD);
	vcd->ordered_f = vcd->algs_f && virtio_has_feature(vdev, VCD_F_ORDERED);
	memset(vcd->algs, 0, sizeof(vcd->algs));
	if (!vcd->algs_f) {
		vcd->algs[CRYPTO_AES_CBC / 32] |= BIT(CRYPTO_AES_CBC % 32);
		vcd->algs[CRYPTO_SHA2_256_HMAC / 32] |= BIT(CRYPTO_SHA2_256_HMAC % 32);
		return;
	}
	virtio_cread_bytes(vdev, 0, &cfg, sizeof(cfg));
	for (i = 0; i < ARRAY_SIZE(vcd->algs); i++)
		vcd->algs[i] = le32_to_cpu(cfg.algs[i]);
	if (!vcd->aead_f)
		vcd->algs[CRYPTO_AES_GCM / 32] &= ~BIT(CRYPTO_AES_GCM % 32);
}

static void vcd_debugfs_add(struct vcd_device *vcd);

static int vcd_probe(struct virtio_device *vdev)
{
	struct vcd_device *vcd;
	int err;

	vcd = kzalloc(sizeof(*vcd), GFP_KERNEL);
	if (!vcd)
		return -ENOMEM;
	vcd->vdev = vdev;
	spin_lock_init(&vcd->lock);
	init_waitqueue_head(&vcd->space_wq);
	init_rwsem(&vcd->remove_sem);
	INIT_LIST_HEAD(&vcd->orphans);
	INIT_WORK(&vcd->orphan_work, vcd_orphan_work);
	vdev->priv = vcd;

	vcd->minor = ida_alloc_max(&vcd_minor_ida, VCD_MINORS - 1, GFP_KERNEL);
	if (vcd->minor < 0) {
		err = vcd->minor;
		kfree(vcd);
		return err;
	}
	device_initialize(&vcd->dev);
	vcd->dev.class = vcd_class;
	vcd->dev.parent = &vdev->dev;
	vcd->dev.devt = MKDEV(MAJOR(vcd_devt), vcd->minor);
	vcd->dev.release = vcd_dev_release;
	vcd->dev.groups = vcd_stats_groups;
	dev_set_drvdata(&vcd->dev, &vcd->stats);
	err = dev_set_name(&vcd->dev, "cryptodev%d", vcd->minor);
	if (err)
		goto out_put;
	cdev_init(&vcd->cdev, &vcd_fops);
	vcd->cdev.owner = THIS_MODULE;

	vcd_discover(vcd);
	vcd->vq = virtio_find_single_vq(vdev, vcd_vq_done, "requests");
	if (IS_ERR(vcd->vq)) {
		err = PTR_ERR(vcd->vq);
		goto out_put;
	}
	virtio_device_ready(vdev);

	err = cdev_device_add(&vcd->cdev, &vcd->dev);
	if (err)
		goto out_vqs;
	dev_info(&vdev->dev, "cryptodev%d: %u-entry queue\n", vcd->minor,
		 virtqueue_get_vring_size(vcd->vq));
	vcd_debugfs_add(vcd);
	return 0;

out_vqs:
	virtio_reset_device(vdev);
	vdev->config->del_vqs(vdev);
out_put:
	ida_free(&vcd_minor_ida, vcd->minor);
	put_device(&vcd->dev);
	return err;
}

/*
 * Take the queue down: new and waiting requests fail with -ENODEV, the device is reset
 * (which drops its handles and sessions) and every chain comes back.
 */
static void vcd_stop(struct vcd_device *vcd)
{
	struct virtio_device *vdev = vcd->vdev;
	struct vcd_request *r;

	spin_lock_irq(&vcd->lock);
	vcd->broken = true;
	spin_unlock_irq(&vcd->lock);
	wake_up_all(&vcd->space_wq);
	/* Wait out submitters between add and notify. */
	down_write(&vcd->remove_sem);
	up_write(&vcd->remove_sem);

	/* The device stops touching our buffers; take them all back. */
	virtio_reset_device(vdev);
	spin_lock_irq(&vcd->lock);
	while ((r = virtqueue_detach_unused_buf(vcd->vq)) != NULL) {
		r->err = -ENODEV;
		vcd_stats_dropped(&vcd->stats);
		vcd_req_answered(r);
	}
	spin_unlock_irq(&vcd->lock);
	vdev->config->del_vqs(vdev);

	/* Orphaned creations: the host state is gone with the reset. */
	cancel_work_sync(&vcd->orphan_work);
	while ((r = list_first_entry_or_null(&vcd->orphans, struct vcd_request, node))) {
		list_del_init(&r->node);
		complete(&r->done);
		vcd_req_put(r);
	}
	vcd->vq = NULL;
}

static void vcd_remove(struct virtio_device *vdev)
{
	struct vcd_device *vcd = vdev->priv;

	/* No suspend by hand: waits for a writer of the file to be done. */
	debugfs_remove_recursive(vcd->debugfs);
	/* No new opens; open files keep vcd alive but see -ENODEV from here on. */
	cdev_device_del(&vcd->cdev, &vcd->dev);
	vcd_stop(vcd);
	ida_free(&vcd_minor_ida, vcd->minor);
	put_device(&vcd->dev);
}

#ifdef CONFIG_PM_SLEEP
/* How long freeze lets requests already on the ring finish before failing them. */
#define VCD_FREEZE_DRAIN	(10 * HZ)

static bool vcd_idle(struct vcd_device *vcd)
{
	return !atomic_long_read(&vcd->stats.in_flight);
}

/*
 * Suspend: no new requests; those on the ring are answered as usual (up to
 * VCD_FREEZE_DRAIN), then the queue comes down as on removal.
 */
static int vcd_freeze(struct virtio_device *vdev)
{
	struct vcd_device *vcd = vdev->priv;

	spin_lock_irq(&vcd->lock);
	vcd->frozen = true;
	spin_unlock_irq(&vcd->lock);
	if (!wait_event_timeout(vcd->space_wq, vcd_idle(vcd), VCD_FREEZE_DRAIN))
		dev_warn(&vcd->dev, "suspending with %ld requests unanswered\n",
			 atomic_long_read(&vcd->stats.in_flight));
	vcd_stop(vcd);
	return 0;
}

/* The device was reset: files opened before get -EBADF, new ones work. */
static int vcd_restore(struct virtio_device *vdev)
{
	struct vcd_device *vcd = vdev->priv;
	struct virtqueue *vq;

	vcd_discover(vcd);
	vq = virtio_find_single_vq(vdev, vcd_vq_done, "requests");
	if (IS_ERR(vq))
		return PTR_ERR(vq);
	spin_lock_irq(&vcd->lock);
	vcd->vq = vq;
	WRITE_ONCE(vcd->epoch, vcd->epoch + 1);
	spin_unlock_irq(&vcd->lock);
	virtio_device_ready(vdev);
	spin_lock_irq(&vcd->lock);
	vcd->broken = false;
	vcd->frozen = false;
	spin_unlock_irq(&vcd->lock);
	wake_up_all(&vcd->space_wq);
	return 0;
}

static struct dentry *vcd_debugfs_root;

/*
 * debugfs <dev>/suspend: writing runs this device's freeze and restore as the PM core
 * does (virtio_device_freeze/restore, which virtio-pci's suspend and resume call), for
 * tests: a guest whose root is on virtio-9p cannot suspend as a whole.
 */
static ssize_t vcd_suspend_write(struct file *file, const char __user *buf, size_t len,
				 loff_t *pos)
{
	struct vcd_device *vcd = file->private_data;
	int err;

	err = virtio_device_freeze(vcd->vdev);
	if (!err)
		err = virtio_device_restore(vcd->vdev);
	return err ? err : len;
}

static const struct file_operations vcd_suspend_fops = {
	.owner = THIS_MODULE,
	.open = simple_open,
	.write = vcd_suspend_write,
	.llseek = no_llseek,
};

static void vcd_debugfs_add(struct vcd_device *vcd)
{
	vcd->debugfs = debugfs_create_dir(dev_name(&vcd->dev), vcd_debugfs_root);
	debugfs_create_file("suspend", 0200, vcd->debugfs, vcd, &vcd_suspend_fops);
}
#else
static void vcd_debugfs_add(struct vcd_device *vcd)
{
}
#endif

static const struct virtio_device_id vcd_id_table[] = {
	{ VIRTIO_ID_CRYPTODEV, VIRTIO_DEV_ANY_ID },
	{ 0 },
};
MODULE_DEVICE_TABLE(virtio, vcd_id_table);

static unsigned int vcd_features[] = {
	VCD_F_ALGS, VCD_F_MULTIPART, VCD_F_AEAD, VCD_F_ORDERED,
};

static struct virtio_driver vcd_driver = {
	.driver.name = KBUILD_MODNAME,
	.driver.owner = THIS_MODULE,
	.feature_table = vcd_features,
	.feature_table_size = ARRAY_SIZE(vcd_features),
	.id_table = vcd_id_table,
	.probe = vcd_probe,
	.remove = vcd_remove,
#ifdef CONFIG_PM_SLEEP
	.freeze = vcd_freeze,
	.restore = vcd_restore,
#endif
};

static int __init vcd_init(void)
{
	int err;

	if (major) {
		vcd_devt = MKDEV(major, 0);
		err = register_chrdev_region(vcd_devt, VCD_MINORS, VCD_DRIVER_NAME);
	} else {
		err = alloc_chrdev_region(&vcd_devt, 0, VCD_MINORS, VCD_DRIVER_NAME);
	}
	if (err) {
		pr_err("cannot get char major %u: %d\n", major, err);
		return err;
	}

#ifdef class_create
	/* Before Linux 6.4, class_create() was a macro that also took the owner. */
	vcd_class = class_create(THIS_MODULE, VCD_DRIVER_NAME);
#else
	vcd_class = class_create(VCD_DRIVER_NAME);
#endif
	if (IS_ERR(vcd_class)) {
		err = PTR_ERR(vcd_class);
		goto out_region;
	}

	vcd_free_wq = alloc_workqueue("vcd_free", 0, 0);
	if (!vcd_free_wq) {
		err = -ENOMEM;
		goto out_class;
	}
#ifdef CONFIG_PM_SLEEP
	vcd_debugfs_root = debugfs_create_dir(VCD_DRIVER_NAME, NULL);
#endif
	err = register_virtio_driver(&vcd_driver);
	if (err)
		goto out_wq;
	return 0;

out_wq:
#ifdef CONFIG_PM_SLEEP
	debugfs_remove_recursive(vcd_debugfs_root);
#endif
	destroy_workqueue(vcd_free_wq);
out_class:
	class_destroy(vcd_class);
out_region:
	unregister_chrdev_region(vcd_devt, VCD_MINORS);
	return err;
}

static void __exit vcd_exit(void)
{
	/* Devices (and their char devices) go first, then what they live in. */
	unregister_virtio_driver(&vcd_driver);
#ifdef CONFIG_PM_SLEEP
	debugfs_remove_recursive(vcd_debugfs_root);
#endif
	destroy_workqueue(vcd_free_wq);	/* after the last request was freed */
	class_destroy(vcd_class);
	unregister_chrdev_region(vcd_devt, VCD_MINORS);
	ida_destroy(&vcd_minor_ida);
}

module_init(vcd_init);
module_exit(vcd_exit);

MODULE_DESCRIPTION("virtio-cryptodev: cryptodev-linux ioctls forwarded to the host");
MODULE_LICENSE("GPL");
MODULE_AUTHOR("cdev contributors");
