// SPDX-License-Identifier: GPL-2.0-only
/*
 * A /dev/crypto client that uses only cryptodev-linux's structs and ioctls (as
 * ../cryptodev.h declares them), run in the guest against /dev/cryptodevN. It prints
 * one "name value" line per result; the test computes the same lines on the host with
 * pyca/cryptography and hashlib and compares them.
 *
 * Every algorithm the device lists, both directions; CIOCCRYPT's flags: no IV (the
 * session's chained IV), COP_FLAG_WRITE_IV, multi-part hashing with COP_FLAG_UPDATE,
 * COP_FLAG_FINAL and COP_FLAG_RESET, COP_FLAG_NO_ZC; CIOCCPHASH, CIOCGSESSINFO,
 * CRIOGET, CIOCASYMFEAT, CIOCFSESSION; CIOCAUTHCRYPT with AES-GCM (separate and
 * in-place dst, a short tag, a tag that does not match, the TLS type); the errno of
 * an algorithm the device lacks.
 *
 * Data: byte i of a buffer seeded s is (i * 7 + s) & 0xff (pattern() below).
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <unistd.h>

#include "../cryptodev.h"

#define BIG 65536	/* large enough for the zero-copy path */

static int fd;

static void pattern(unsigned char *p, size_t n, unsigned int seed)
{
	size_t i;

	for (i = 0; i < n; i++)
		p[i] = (unsigned char)(i * 7 + seed);
}

static void hex(const char *name, const unsigned char *p, size_t n)
{
	size_t i;

	printf("%s ", name);
	for (i = 0; i < n; i++)
		printf("%02x", p[i]);
	printf("\n");
}

static void die(const char *what)
{
	printf("error %s %s\n", what, strerror(errno));
	exit(1);
}

static __u32 session(__u32 cipher, const unsigned char *key, __u32 keylen, __u32 mac,
		     const unsigned char *mackey, __u32 mackeylen)
{
	struct session_op sop;

	memset(&sop, 0, sizeof(sop));
	sop.cipher = cipher;
	sop.keylen = keylen;
	sop.key = (__u8 *)key;
	sop.mac = mac;
	sop.mackeylen = mackeylen;
	sop.mackey = (__u8 *)mackey;
	if (ioctl(fd, CIOCGSESSION, &sop))
		die("CIOCGSESSION");
	return sop.ses;
}

static void do_crypt(__u32 ses, __u16 op, __u16 flags, const void *src, void *dst, __u32 len,
		     void *iv, void *mac)
{
	struct crypt_op cop;

	memset(&cop, 0, sizeof(cop));
	cop.ses = ses;
	cop.op = op;
	cop.flags = flags;
	cop.len = len;
	cop.src = (__u8 *)src;
	cop.dst = dst;
	cop.iv = iv;
	cop.mac = mac;
	if (ioctl(fd, CIOCCRYPT, &cop))
		die("CIOCCRYPT");
}

static void end_session(__u32 ses)
{
	if (ioctl(fd, CIOCFSESSION, &ses))
		die("CIOCFSESSION");
}

struct cipher {
	const char *name;
	__u32 alg;
	__u32 keylen, ivlen, len;
};

static const struct cipher ciphers[] = {
	{ "aes-128-cbc", CRYPTO_AES_CBC, 16, 16, 64 },
	{ "aes-192-cbc", CRYPTO_AES_CBC, 24, 16, 64 },
	{ "aes-256-cbc", CRYPTO_AES_CBC, 32, 16, BIG },
	{ "aes-128-ecb", CRYPTO_AES_ECB, 16, 0, 64 },
	{ "aes-256-ecb", CRYPTO_AES_ECB, 32, 0, BIG },
	{ "aes-128-ctr", CRYPTO_AES_CTR, 16, 16, 61 },
	{ "aes-256-ctr", CRYPTO_AES_CTR, 32, 16, BIG },
	{ "aes-128-xts", CRYPTO_AES_XTS, 32, 16, 64 },
	{ "aes-256-xts", CRYPTO_AES_XTS, 64, 16, BIG },
	{ "des3-cbc", CRYPTO_3DES_CBC, 24, 8, 64 },
};

struct digest {
	const char *name;
	__u32 alg;
	__u32 len;
	int keyed;
};

static const struct digest digests[] = {
	{ "md5", CRYPTO_MD5, 16, 0 },
	{ "sha1", CRYPTO_SHA1, 20, 0 },
	{ "sha224", CRYPTO_SHA2_224, 28, 0 },
	{ "sha256", CRYPTO_SHA2_256, 32, 0 },
	{ "sha384", CRYPTO_SHA2_384, 48, 0 },
	{ "sha512", CRYPTO_SHA2_512, 64, 0 },
	{ "hmac-md5", CRYPTO_MD5_HMAC, 16, 1 },
	{ "hmac-sha1", CRYPTO_SHA1_HMAC, 20, 1 },
	{ "hmac-sha224", CRYPTO_SHA2_224_HMAC, 28, 1 },
	{ "hmac-sha256", CRYPTO_SHA2_256_HMAC, 32, 1 },
	{ "hmac-sha384", CRYPTO_SHA2_384_HMAC, 48, 1 },
	{ "hmac-sha512", CRYPTO_SHA2_512_HMAC, 64, 1 },
};

static unsigned char src[BIG], dst[BIG], back[BIG];

static void run_cipher(const struct cipher *c)
{
	unsigned char key[64], iv[16], iv0[16];
	char name[96];
	__u32 ses, half;

	pattern(key, c->keylen, 1);
	pattern(iv, sizeof(iv), 2);
	pattern(src, c->len, 3);
	memcpy(iv0, iv, sizeof(iv));
	ses = session(c->alg, key, c->keylen, 0, NULL, 0);
	do_crypt(ses, COP_ENCRYPT, 0, src, dst, c->len, c->ivlen ? iv : NULL, NULL);
	snprintf(name, sizeof(name), "%s-enc", c->name);
	hex(name, dst, c->len);
	do_crypt(ses, COP_DECRYPT, COP_FLAG_NO_ZC, dst, back, c->len, c->ivlen ? iv : NULL, NULL);
	snprintf(name, sizeof(name), "%s-roundtrip", c->name);
	printf("%s %d\n", name, !memcmp(src, back, c->len));
	if (!c->ivlen || c->alg == CRYPTO_AES_XTS) {
		end_session(ses);
		return;
	}
	/* Two halves: the second with no IV continues the chain; WRITE_IV hands it out. */
	half = c->len / 2 / 16 * 16;
	do_crypt(ses, COP_ENCRYPT, COP_FLAG_WRITE_IV, src, dst, half, iv, NULL);
	snprintf(name, sizeof(name), "%s-write-iv", c->name);
	hex(name, iv, c->ivlen);
	do_crypt(ses, COP_ENCRYPT, 0, src + half, dst + half, c->len - half, NULL, NULL);
	snprintf(name, sizeof(name), "%s-chained", c->name);
	hex(name, dst, c->len);
	memcpy(iv, iv0, sizeof(iv));
	end_session(ses);
}

static void run_digest(const struct digest *d)
{
	unsigned char key[100], mac[64], mac2[64];
	__u32 ses, ses2, klen = d->keyed ? sizeof(key) : 0;
	char name[96];

	pattern(key, sizeof(key), 4);
	pattern(src, 1000, 5);
	ses = session(0, NULL, 0, d->alg, key, klen);
	do_crypt(ses, COP_ENCRYPT, 0, src, NULL, 1000, NULL, mac);
	snprintf(name, sizeof(name), "%s-oneshot", d->name);
	hex(name, mac, d->len);
	/* Three parts, the last an empty FINAL. */
	do_crypt(ses, COP_ENCRYPT, COP_FLAG_UPDATE | COP_FLAG_RESET, src, NULL, 100, NULL, mac);
	do_crypt(ses, COP_ENCRYPT, COP_FLAG_UPDATE, src + 100, NULL, 900, NULL, mac);
	do_crypt(ses, COP_ENCRYPT, COP_FLAG_FINAL, NULL, NULL, 0, NULL, mac);
	snprintf(name, sizeof(name), "%s-multipart", d->name);
	hex(name, mac, d->len);
	/* CIOCCPHASH: a shared prefix, two endings. */
	ses2 = session(0, NULL, 0, d->alg, key, klen);
	do_crypt(ses, COP_ENCRYPT, COP_FLAG_UPDATE | COP_FLAG_RESET, src, NULL, 500, NULL, mac);
	{
		struct cphash_op cp = { .dst_ses = ses2, .src_ses = ses };

		if (ioctl(fd, CIOCCPHASH, &cp))
			die("CIOCCPHASH");
	}
	do_crypt(ses, COP_ENCRYPT, COP_FLAG_FINAL, src + 500, NULL, 500, NULL, mac);
	do_crypt(ses2, COP_ENCRYPT, COP_FLAG_FINAL, src + 500, NULL, 10, NULL, mac2);
	snprintf(name, sizeof(name), "%s-copy-a", d->name);
	hex(name, mac, d->len);
	snprintf(name, sizeof(name), "%s-copy-b", d->name);
	hex(name, mac2, d->len);
	end_session(ses2);
	end_session(ses);
}

static int authcrypt(__u32 ses, __u16 op, __u16 flags, const void *aad, __u32 aad_len,
		     const void *src, void *dst, __u32 len, __u32 tag_len, void *iv,
		     struct crypt_auth_op *out)
{
	memset(out, 0, sizeof(*out));
	out->ses = ses;
	out->op = op;
	out->flags = flags;
	out->len = len;
	out->auth_len = aad_len;
	out->auth_src = (__u8 *)aad;
	out->src = (__u8 *)src;
	out->dst = dst;
	out->tag_len = tag_len;
	out->iv = iv;
	out->iv_len = 12;
	return ioctl(fd, CIOCAUTHCRYPT, out) ? errno : 0;
}

static void run_gcm(void)
{
	unsigned char key[32], iv[12], aad[40];
	struct crypt_auth_op caop;
	__u32 ses;
	int err;

	pattern(key, sizeof(key), 8);
	pattern(iv, sizeof(iv), 9);
	pattern(aad, sizeof(aad), 10);
	pattern(src, 300, 11);
	ses = session(CRYPTO_AES_GCM, key, 32, 0, NULL, 0);
	if (authcrypt(ses, COP_ENCRYPT, 0, aad, sizeof(aad), src, dst, 300, 0, iv, &caop))
		die("CIOCAUTHCRYPT");
	hex("gcm-enc", dst, 316);
	printf("gcm-enc-len %u %ld\n", caop.len, (long)(caop.tag - dst));
	/* In place: the ciphertext and tag are replaced by the plaintext. */
	memcpy(back, dst, 316);
	if (authcrypt(ses, COP_DECRYPT, 0, aad, sizeof(aad), back, back, 316, 0, iv, &caop))
		die("CIOCAUTHCRYPT");
	printf("gcm-dec %d %u\n", !memcmp(back, src, 300), caop.len);
	dst[5] ^= 1;
	err = authcrypt(ses, COP_DECRYPT, 0, aad, sizeof(aad), dst, back, 316, 0, iv, &caop);
	printf("gcm-bad-tag %s\n", strerror(err));
	if (authcrypt(ses, COP_ENCRYPT, 0, NULL, 0, src, dst, 64, 8, iv, &caop))
		die("CIOCAUTHCRYPT");
	hex("gcm-tag8", dst, 72);
	err = authcrypt(ses, COP_ENCRYPT, COP_FLAG_AEAD_TLS_TYPE, aad, 13, src, src, 64, 0, iv,
			&caop);
	printf("gcm-tls %s\n", strerror(err));
	end_session(ses);
}

int main(int argc, char **argv)
{
	const char *node = argc > 1 ? argv[1] : "/dev/cryptodev0";
	unsigned char key[32], mac[64];
	struct session_info_op info;
	struct session_op sop;
	__u32 ses, clone, feat = 0xffffffff;
	unsigned int i;

	fd = open(node, O_RDWR);
	if (fd < 0)
		die("open");
	for (i = 0; i < sizeof(ciphers) / sizeof(ciphers[0]); i++)
		run_cipher(&ciphers[i]);
	for (i = 0; i < sizeof(digests) / sizeof(digests[0]); i++)
		run_digest(&digests[i]);
	run_gcm();

	/* Cipher and MAC together: the MAC covers the plaintext both ways. */
	pattern(key, sizeof(key), 6);
	pattern(src, 256, 7);
	ses = session(CRYPTO_AES_CBC, key, 16, CRYPTO_SHA1_HMAC, key, 32);
	do_crypt(ses, COP_ENCRYPT, 0, src, dst, 256, key, mac);
	hex("authenc-enc", dst, 256);
	hex("authenc-enc-mac", mac, 20);
	do_crypt(ses, COP_DECRYPT, 0, dst, back, 256, key, mac);
	hex("authenc-dec-mac", mac, 20);

	memset(&info, 0, sizeof(info));
	info.ses = ses;
	if (ioctl(fd, CIOCGSESSINFO, &info))
		die("CIOCGSESSINFO");
	printf("info %s %s\n", info.cipher_info.cra_name, info.hash_info.cra_name);

	/* CRIOGET: another descriptor of the same file, so the same sessions. */
	if (ioctl(fd, CRIOGET, &clone))
		die("CRIOGET");
	{
		int keep = fd;

		fd = (int)clone;
		do_crypt(ses, COP_ENCRYPT, 0, src, dst, 16, key, mac);
		hex("crioget-enc", dst, 16);
		close(fd);
		fd = keep;
	}
	if (ioctl(fd, CIOCASYMFEAT, &feat))
		die("CIOCASYMFEAT");
	printf("asymfeat %u\n", feat);
	end_session(ses);

	/* An algorithm cryptodev-linux knows and this device does not have. */
	memset(&sop, 0, sizeof(sop));
	sop.cipher = CRYPTO_CAMELLIA_CBC;
	sop.keylen = 16;
	sop.key = key;
	printf("camellia %s\n", ioctl(fd, CIOCGSESSION, &sop) ? strerror(errno) : "ok");
	/* And a number it does not know. */
	sop.cipher = 999;
	printf("unknown %s\n", ioctl(fd, CIOCGSESSION, &sop) ? strerror(errno) : "ok");
	close(fd);
	return 0;
}
