/* SPDX-License-Identifier: GPL-2.0-only OR BSD-3-Clause */
/*
 * virtio-cryptodev wire protocol, shared by the guest frontend (kernel/) and the
 * QEMU backend (qemu/). This is the only definition of the protocol: both builds
 * include this very file.
 *
 * Every request is one descriptor chain on the single request virtqueue:
 *
 *   out[0]              struct vcd_req       (device-readable, always)
 *   out[1..]            payload buffers      (device-readable, per call below)
 *   in[0..]             result buffers       (device-writable, per call below)
 *   in[last]            struct vcd_resp      (device-writable, always)
 *
 * Payload and result buffers appear only when their length is non-zero, in the order
 * listed. All integers are little-endian. The guest never sends pointers, host file
 * descriptors, raw CIOC* numbers or raw cryptodev structs: the layout below is the same
 * for 32- and 64-bit guests and hosts.
 *
 *   call             out[1..]                      in[0..]
 *   VCD_CALL_OPEN    -                             -
 *   VCD_CALL_CLOSE   -                             -
 *   VCD_CALL_IOCTL, cmd =
 *     VCD_CMD_SESSION_CREATE   key (keylen), mackey (mackeylen)   -
 *     VCD_CMD_SESSION_DESTROY  -                                  -
 *     VCD_CMD_CRYPT            iv (ivlen), src (len)              dst (len) if the session
 *                                                                 has a cipher, mac
 *                                                                 (VCD_HMAC_SHA256_LEN) if it
 *                                                                 has a MAC
 *     VCD_CMD_SESSION_INFO     -                                  struct vcd_session_info
 *
 * OPEN answers a handle in vcd_resp.handle; every other call names it in
 * vcd_req.handle. Handles and sessions are the device's own small numbers: the guest
 * never sees a host fd. Sessions belong to the handle that created them and die with it.
 * SESSION_CREATE answers the session id in vcd_resp.session. Every call, CLOSE included,
 * answers a status.
 *
 * Crypt semantics follow cryptodev-linux: with a cipher, src is encrypted or decrypted
 * into dst (len a multiple of 16, ivlen 16); with a MAC only, the HMAC of src is
 * returned; with both, encryption MACs the plaintext (src) and decryption MACs the
 * plaintext (dst). The IV is not written back.
 */
#ifndef VIRTIO_CRYPTODEV_H
#define VIRTIO_CRYPTODEV_H

#ifdef __KERNEL__
#include <linux/types.h>
#else
#include <stdint.h>
typedef uint16_t __le16;
typedef uint32_t __le32;
#endif

/*
 * Virtio device id 63: the course's id 30 is now the video encoder and its PCI id
 * 0x1013 is virtio-pmem. Linux 6.1 and QEMU 7.2 assign 1-13 and 16-41, and the virtio
 * specification allocates upward from 1 (currently in the 40s). 63 is the highest id the
 * modern virtio-pci range 0x1040 + id (0x1040-0x107f) can express, so it is the one
 * furthest from any future allocation that still works with unmodified virtio-pci code.
 */
#define VIRTIO_ID_CRYPTODEV		63
#define VIRTIO_CRYPTODEV_PCI_DEVICE_ID	(0x1040 + VIRTIO_ID_CRYPTODEV)	/* 0x107f */

#define VCD_QUEUE_SIZE		128

/* Call types (the seed's). */
#define VCD_CALL_OPEN		0
#define VCD_CALL_CLOSE		1
#define VCD_CALL_IOCTL		2

/* Our own ioctl command codes: never the CIOC* numbers, which encode struct sizes. */
#define VCD_CMD_SESSION_CREATE	1	/* CIOCGSESSION */
#define VCD_CMD_SESSION_DESTROY	2	/* CIOCFSESSION */
#define VCD_CMD_CRYPT		3	/* CIOCCRYPT */
#define VCD_CMD_SESSION_INFO	4	/* CIOCGSESSINFO */

/* Algorithms: cryptodev-linux's numbers, which are stable ABI. */
#define VCD_CIPHER_NONE		0
#define VCD_CIPHER_AES_CBC	11	/* CRYPTO_AES_CBC */
#define VCD_MAC_NONE		0
#define VCD_MAC_SHA256_HMAC	18	/* CRYPTO_SHA2_256_HMAC */

#define VCD_OP_ENCRYPT		0	/* COP_ENCRYPT */
#define VCD_OP_DECRYPT		1	/* COP_DECRYPT */

/* Limits, enforced by both sides. */
#define VCD_MAX_KEY_LEN		64	/* CRYPTO_CIPHER_MAX_KEY_LEN */
#define VCD_MAX_MAC_KEY_LEN	512	/* CRYPTO_HMAC_MAX_KEY_LEN */
#define VCD_BLOCK_LEN		16
#define VCD_IV_LEN		16
#define VCD_HMAC_SHA256_LEN	32
#define VCD_MAX_DATA_LEN	(256 * 1024)	/* largest src/dst of one CRYPT */
#define VCD_MAX_HANDLES		1024	/* open files per device */
#define VCD_MAX_SESSIONS	64	/* sessions per handle */
#define VCD_NAME_LEN		64

/* Status codes in vcd_resp.status; the frontend maps them to errno. */
#define VCD_S_OK		0
#define VCD_S_BADMSG		1	/* malformed chain: counts, lengths  -> -EIO */
#define VCD_S_INVAL		2	/* bad argument                      -> -EINVAL */
#define VCD_S_NOHANDLE		3	/* unknown handle                    -> -EBADF */
#define VCD_S_NOSESSION		4	/* unknown session                   -> -EINVAL */
#define VCD_S_NOTSUPP		5	/* algorithm or command unsupported  -> -EOPNOTSUPP */
#define VCD_S_NOMEM		6	/* host out of memory                -> -ENOMEM */
#define VCD_S_LIMIT		7	/* too many handles or sessions      -> -EMFILE */
#define VCD_S_ENGINE		8	/* host crypto engine failed          -> -EIO */

struct vcd_req {
	__le32 type;		/* VCD_CALL_* */
	__le32 handle;		/* from OPEN; 0 for OPEN */
	__le32 cmd;		/* VCD_CMD_* for IOCTL, else 0 */
	__le32 session;		/* DESTROY, CRYPT, INFO */
	__le32 cipher;		/* CREATE: VCD_CIPHER_* */
	__le32 mac;		/* CREATE: VCD_MAC_* */
	__le32 keylen;		/* CREATE: bytes in the key buffer */
	__le32 mackeylen;	/* CREATE: bytes in the mackey buffer */
	__le16 op;		/* CRYPT: VCD_OP_* */
	__le16 flags;		/* CRYPT: must be 0 */
	__le32 len;		/* CRYPT: bytes in src and dst */
	__le32 ivlen;		/* CRYPT: bytes in iv (VCD_IV_LEN with a cipher, else 0) */
	__le32 reserved;	/* must be 0 */
};				/* 48 bytes */

struct vcd_resp {
	__le32 status;		/* VCD_S_* */
	__le32 handle;		/* OPEN */
	__le32 session;		/* SESSION_CREATE */
	__le32 reserved;
};				/* 16 bytes */

struct vcd_session_info {
	char cipher_name[VCD_NAME_LEN];		/* NUL-terminated, e.g. "cbc(aes)" */
	char cipher_driver[VCD_NAME_LEN];	/* e.g. "qcrypto-builtin" */
	char mac_name[VCD_NAME_LEN];		/* e.g. "hmac(sha256)" */
	char mac_driver[VCD_NAME_LEN];
	__le32 alignmask;
	__le32 flags;				/* SIOP_FLAG_KERNEL_DRIVER_ONLY = 1 */
};					/* 264 bytes */

#endif /* VIRTIO_CRYPTODEV_H */
