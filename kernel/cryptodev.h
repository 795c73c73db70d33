/* SPDX-License-Identifier: GPL-2.0+ */
/*
 * The cryptodev-linux user ABI, the part that /dev/cryptodevN implements. The
 * layouts and ioctl numbers must stay byte-for-byte those of cryptodev-linux:
 * existing programs are built against them.
 *
 * x86_64: sizeof(struct session_op) == sizeof(struct crypt_op) == 48,
 * sizeof(struct session_info_op) == 268.
 */
#ifndef CRYPTODEV_ABI_H
#define CRYPTODEV_ABI_H

#include <linux/types.h>
#include <linux/ioctl.h>
#ifndef __KERNEL__
#define __user
#endif

enum cryptodev_crypto_op_t {
	CRYPTO_DES_CBC = 1,
	CRYPTO_3DES_CBC = 2,
	CRYPTO_BLF_CBC = 3,
	CRYPTO_CAST_CBC = 4,
	CRYPTO_SKIPJACK_CBC = 5,
	CRYPTO_MD5_HMAC = 6,
	CRYPTO_SHA1_HMAC = 7,
	CRYPTO_RIPEMD160_HMAC = 8,
	CRYPTO_MD5_KPDK = 9,
	CRYPTO_SHA1_KPDK = 10,
	CRYPTO_RIJNDAEL128_CBC = 11,
	CRYPTO_AES_CBC = CRYPTO_RIJNDAEL128_CBC,
	CRYPTO_ARC4 = 12,
	CRYPTO_MD5 = 13,
	CRYPTO_SHA1 = 14,
	CRYPTO_DEFLATE_COMP = 15,
	CRYPTO_NULL = 16,
	CRYPTO_LZS_COMP = 17,
	CRYPTO_SHA2_256_HMAC = 18,
	CRYPTO_SHA2_384_HMAC = 19,
	CRYPTO_SHA2_512_HMAC = 20,
	CRYPTO_AES_CTR = 21,
	CRYPTO_AES_XTS = 22,
	CRYPTO_AES_ECB = 23,
	CRYPTO_AES_GCM = 50,
	CRYPTO_CAMELLIA_CBC = 101,
	CRYPTO_RIPEMD160,
	CRYPTO_SHA2_224,
	CRYPTO_SHA2_256,
	CRYPTO_SHA2_384,
	CRYPTO_SHA2_512,
	CRYPTO_SHA2_224_HMAC,
	CRYPTO_ALGORITHM_ALL, /* keep last */
};

#define CRYPTO_ALG_FLAG_SUPPORTED	1
#define CRYPTO_ALG_FLAG_RNG_ENABLE	2
#define CRYPTO_ALG_FLAG_DSA_SHA		4

#define CRYPTO_HMAC_MAX_KEY_LEN		512
#define CRYPTO_CIPHER_MAX_KEY_LEN	64
#define EALG_MAX_BLOCK_LEN		16
#define AALG_MAX_RESULT_LEN		64
#define CRYPTODEV_MAX_ALG_NAME		64
#define HASH_MAX_LEN			64

/* CIOCGSESSION: create a session. */
struct session_op {
	__u32 cipher;		/* enum cryptodev_crypto_op_t */
	__u32 mac;		/* enum cryptodev_crypto_op_t */
	__u32 keylen;
	__u8 __user *key;
	__u32 mackeylen;
	__u8 __user *mackey;
	__u32 ses;		/* out: session identifier */
};

/* CIOCGSESSINFO: what implements a session. */
struct session_info_op {
	__u32 ses;		/* in: session identifier */
	struct alg_info {
		char cra_name[CRYPTODEV_MAX_ALG_NAME];
		char cra_driver_name[CRYPTODEV_MAX_ALG_NAME];
	} cipher_info, hash_info;
	__u16 alignmask;
	__u32 flags;		/* SIOP_FLAG_* */
};

#define SIOP_FLAG_KERNEL_DRIVER_ONLY	1

#define COP_ENCRYPT	0
#define COP_DECRYPT	1

/* CIOCCRYPT: one operation on a session. */
struct crypt_op {
	__u32 ses;
	__u16 op;		/* COP_ENCRYPT or COP_DECRYPT */
	__u16 flags;		/* COP_FLAG_* */
	__u32 len;		/* bytes in src (and dst) */
	__u8 __user *src;
	__u8 __user *dst;
	__u8 __user *mac;	/* out: the MAC, for sessions with one */
	__u8 __user *iv;
};

#define COP_FLAG_NONE		(0 << 0)
#define COP_FLAG_UPDATE		(1 << 0)	/* multi-update hash mode */
#define COP_FLAG_FINAL		(1 << 1)	/* multi-update final hash mode */
#define COP_FLAG_WRITE_IV	(1 << 2)	/* update the IV during operation */
#define COP_FLAG_NO_ZC		(1 << 3)	/* do not zero-copy */
#define COP_FLAG_AEAD_TLS_TYPE	(1 << 4)
#define COP_FLAG_AEAD_SRTP_TYPE	(1 << 5)
#define COP_FLAG_RESET		(1 << 6)	/* multi-update reset */

/*
 * CIOCAUTHCRYPT: AEAD (AES-GCM). Encryption writes len bytes of ciphertext and the tag
 * to dst; decryption takes ciphertext and tag (len counts both) and writes the
 * plaintext. len is updated to the bytes written, tag to where the tag is in dst.
 */
struct crypt_auth_op {
	__u32 ses;
	__u16 op;		/* COP_ENCRYPT or COP_DECRYPT */
	__u16 flags;		/* COP_FLAG_AEAD_* */
	__u32 len;
	__u32 auth_len;
	__u8 __user *auth_src;
	__u8 __user *src;
	__u8 __user *dst;
	__u8 __user *tag;
	__u32 tag_len;		/* 0: the full tag */
	__u8 __user *iv;
	__u32 iv_len;
};

/* CIOCCPHASH: copy the hash state of src_ses into dst_ses. */
struct cphash_op {
	__u32 dst_ses;
	__u32 src_ses;
};

#define CRIOGET		_IOWR('c', 101, __u32)
#define CIOCGSESSION	_IOWR('c', 102, struct session_op)
#define CIOCFSESSION	_IOW('c', 103, __u32)
#define CIOCCRYPT	_IOWR('c', 104, struct crypt_op)
#define CIOCASYMFEAT	_IOR('c', 106, __u32)
#define CIOCGSESSINFO	_IOWR('c', 107, struct session_info_op)
#define CIOCAUTHCRYPT	_IOWR('c', 109, struct crypt_auth_op)
#define CIOCASYNCCRYPT	_IOW('c', 110, struct crypt_op)
#define CIOCASYNCFETCH	_IOR('c', 111, struct crypt_op)
#define CIOCCPHASH	_IOW('c', 112, struct cphash_op)

#endif /* CRYPTODEV_ABI_H */
