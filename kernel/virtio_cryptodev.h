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
 *     VCD_CMD_CRYPT            iv (ivlen), src (len)              dst (len) with a cipher,
 *                                                                 iv out (the cipher's IV
 *                                                                 size) with VCD_CF_IV_OUT,
 *                                                                 digest (the MAC's size)
 *                                                                 when the MAC is output
 *     VCD_CMD_SESSION_INFO     -                                  struct vcd_session_info
 *     VCD_CMD_HASH_COPY        -                                  -
 *     VCD_CMD_AUTHCRYPT        struct vcd_aead, iv (ivlen),       dst (len + tag_len to
 *                              aad (auth_len), src (len)          encrypt, len - tag_len
 *                                                                 to decrypt)
 *
 * OPEN answers a handle in vcd_resp.handle; every other call names it in
 * vcd_req.handle. Handles and sessions are the device's own small numbers: the guest
 * never sees a host fd. Sessions belong to the handle that created them and die with it.
 * SESSION_CREATE answers the session id in vcd_resp.session. Every call, CLOSE included,
 * answers a status.
 *
 * Crypt semantics follow cryptodev-linux: with a cipher, src is encrypted or decrypted
 * into dst; with a MAC only, src is hashed; with both, encryption MACs the plaintext
 * (src) and decryption MACs the plaintext (dst). Each session keeps a chained IV on the
 * device: ivlen equal to the cipher's IV size sets it first, ivlen 0 continues from
 * where the previous operation left it (CBC: the last ciphertext block, CTR: the next
 * counter block, XTS: unchanged), as cryptodev-linux does for a NULL iv. With
 * VCD_CF_IV_OUT the device writes the IV after the operation (COP_FLAG_WRITE_IV).
 *
 * A MAC or hash session keeps a running state on the device. VCD_CF_HASH_RESET starts
 * it afresh before the data is added; VCD_CF_HASH_FINAL outputs the digest after it
 * and starts afresh. Without VCD_F_MULTIPART every CRYPT of a MAC session must carry
 * both (one-shot). HASH_COPY replaces the state of `session` with a copy of the state
 * of `session2` (CIOCCPHASH); both must be this handle's, with the same MAC.
 *
 * AUTHCRYPT (VCD_F_AEAD, CIOCAUTHCRYPT) runs an AEAD session (AES-GCM) as
 * cryptodev-linux lays it out: encryption turns len bytes of plaintext into len bytes of
 * ciphertext followed by the tag; decryption takes ciphertext followed by the tag (len
 * counts both) and answers VCD_S_BADTAG, writing nothing, when the tag does not match.
 * The IV is always given (ivlen 12); tag_len 0 means the full 16 bytes.
 *
 * Discovery: the device offers feature bits (VCD_F_*) and a config space (struct
 * vcd_config) listing the algorithms and limits it supports. Without VCD_F_ALGS
 * negotiated the device speaks the first version of this protocol: AES-CBC and
 * HMAC-SHA256 only (VCD_S_NOTSUPP for the rest), an explicit IV on every CRYPT, flags
 * 0, and every CRYPT of a MAC session one-shot (as if RESET|FINAL). So an older driver
 * on a newer device keeps working, and a newer driver on an older device (no feature
 * bits, no config space) knows exactly what it may use.
 *
 * Ordering: requests are answered in any order (large ones run on host worker threads),
 * but with VCD_F_ORDERED the CRYPTs and AUTHCRYPTs of one session run in the order they
 * were made available, so a guest may keep many in flight on a session whose chained IV
 * or hash state links them (CIOCASYNCCRYPT).
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
#define VCD_CMD_HASH_COPY	5	/* CIOCCPHASH (VCD_F_MULTIPART) */
#define VCD_CMD_AUTHCRYPT	6	/* CIOCAUTHCRYPT (VCD_F_AEAD) */

/* Feature bits (device-specific range). */
#define VCD_F_ALGS		0	/* vcd_config, the full algorithm table, chained IVs */
#define VCD_F_MULTIPART		1	/* VCD_CF_HASH_* apart, HASH_COPY */
#define VCD_F_AEAD		2	/* AES-GCM sessions, AUTHCRYPT */
#define VCD_F_ORDERED		3	/* a session's CRYPTs run in ring order (async) */

/* CRYPT flags (vcd_req.flags); our own, not COP_FLAG_*. */
#define VCD_CF_HASH_RESET	0x1	/* MAC session: restart the state before the data */
#define VCD_CF_HASH_FINAL	0x2	/* MAC session: output the digest, then restart */
#define VCD_CF_IV_OUT		0x4	/* cipher session: write the next IV back */
#define VCD_CF_ALL		0x7

/* Algorithms: cryptodev-linux's numbers, which are stable ABI. */
#define VCD_CIPHER_NONE		0
#define VCD_CIPHER_3DES_CBC	2	/* CRYPTO_3DES_CBC */
#define VCD_CIPHER_AES_CBC	11	/* CRYPTO_AES_CBC */
#define VCD_CIPHER_AES_CTR	21	/* CRYPTO_AES_CTR */
#define VCD_CIPHER_AES_XTS	22	/* CRYPTO_AES_XTS */
#define VCD_CIPHER_AES_ECB	23	/* CRYPTO_AES_ECB */
#define VCD_CIPHER_AES_GCM	50	/* CRYPTO_AES_GCM (VCD_F_AEAD) */
#define VCD_MAC_NONE		0
#define VCD_MAC_MD5_HMAC	6	/* CRYPTO_MD5_HMAC */
#define VCD_MAC_SHA1_HMAC	7	/* CRYPTO_SHA1_HMAC */
#define VCD_MAC_MD5		13	/* CRYPTO_MD5 */
#define VCD_MAC_SHA1		14	/* CRYPTO_SHA1 */
#define VCD_MAC_SHA256_HMAC	18	/* CRYPTO_SHA2_256_HMAC */
#define VCD_MAC_SHA384_HMAC	19	/* CRYPTO_SHA2_384_HMAC */
#define VCD_MAC_SHA512_HMAC	20	/* CRYPTO_SHA2_512_HMAC */
#define VCD_MAC_SHA224		103	/* CRYPTO_SHA2_224 */
#define VCD_MAC_SHA256		104	/* CRYPTO_SHA2_256 */
#define VCD_MAC_SHA384		105	/* CRYPTO_SHA2_384 */
#define VCD_MAC_SHA512		106	/* CRYPTO_SHA2_512 */
#define VCD_MAC_SHA224_HMAC	107	/* CRYPTO_SHA2_224_HMAC */
#define VCD_ALG_BITS		128	/* vcd_config.algs covers numbers 0..127 */

#define VCD_OP_ENCRYPT		0	/* COP_ENCRYPT */
#define VCD_OP_DECRYPT		1	/* COP_DECRYPT */

/* Limits, enforced by both sides. */
#define VCD_MAX_KEY_LEN		64	/* CRYPTO_CIPHER_MAX_KEY_LEN */
#define VCD_MAX_MAC_KEY_LEN	512	/* CRYPTO_HMAC_MAX_KEY_LEN */
#define VCD_BLOCK_LEN		16	/* AES */
#define VCD_IV_LEN		16	/* the largest IV (AES) */
#define VCD_HMAC_SHA256_LEN	32
#define VCD_MAX_DIGEST_LEN	64	/* SHA-512 */
#define VCD_GCM_IV_LEN		12
#define VCD_GCM_TAG_LEN		16	/* the full tag; 4, 8 and 12-15 may be asked */
#define VCD_MAX_AAD_LEN		4096	/* as cryptodev-linux (a page) */
#define VCD_MAX_DATA_LEN	(256 * 1024)	/* largest src/dst of one CRYPT */
#define VCD_MAX_HANDLES		1024	/* open files per device */
#define VCD_MAX_SESSIONS	16384	/* sessions per device (default budget) */
#define VCD_MAX_HASH_STATES	8192	/* MAC sessions per device (default budget) */
#define VCD_NAME_LEN		64

/* Status codes in vcd_resp.status; the frontend maps them to errno. */
#define VCD_S_OK		0
#define VCD_S_BADMSG		1	/* malformed chain: counts, lengths  -> -EIO */
#define VCD_S_INVAL		2	/* bad argument                      -> -EINVAL */
#define VCD_S_NOHANDLE		3	/* unknown handle                    -> -EBADF */
#define VCD_S_NOSESSION		4	/* unknown session                   -> -EINVAL */
#define VCD_S_NOTSUPP		5	/* algorithm or command unsupported  -> -EOPNOTSUPP */
#define VCD_S_NOMEM		6	/* host out of memory                -> -ENOMEM */
#define VCD_S_LIMIT		7	/* a handle or session budget is spent -> -EMFILE */
#define VCD_S_ENGINE		8	/* host crypto engine failed          -> -EIO */
#define VCD_S_BADTAG		9	/* AEAD tag mismatch                  -> -EBADMSG */

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
	__le16 flags;		/* CRYPT: VCD_CF_* */
	__le32 len;		/* CRYPT: bytes in src and dst */
	__le32 ivlen;		/* CRYPT: bytes in iv: the cipher's IV size, or 0 (chained) */
	__le32 session2;	/* HASH_COPY: the source session; else 0 */
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

/* AUTHCRYPT's second header, the first payload buffer. */
struct vcd_aead {
	__le32 auth_len;	/* bytes of additional authenticated data */
	__le32 tag_len;		/* 0: VCD_GCM_TAG_LEN */
	__le32 reserved[2];	/* must be 0 */
};				/* 16 bytes */

/* Config space (VCD_F_ALGS): read-only, fixed for the device's life. */
struct vcd_config {
	__le32 algs[VCD_ALG_BITS / 32];	/* bit n: algorithm number n is supported */
	__le32 max_data_len;		/* largest CRYPT len */
	__le32 max_handles;		/* open files */
	__le32 max_sessions;		/* sessions, all handles together */
	__le32 max_hash_states;		/* MAC/hash sessions, all handles together */
};					/* 32 bytes */

#endif /* VIRTIO_CRYPTODEV_H */
