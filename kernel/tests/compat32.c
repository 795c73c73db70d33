// SPDX-License-Identifier: GPL-2.0-only
/*
 * 32-bit client of /dev/cryptodevN, for the driver's compat_ioctl. Built without a C
 * library (none for i386 is needed): gcc -m32 -static -nostdlib -ffreestanding.
 *
 * Opens /dev/cryptodev0, creates an AES-128-CBC session with an all-zero key through the 32-bit layout of
 * session_op (28 bytes), encrypts one all-zero block with an all-zero IV through the
 * 32-bit crypt_op, and prints the ciphertext in hex, then "efault" and "einval" for a
 * bad src pointer and an unknown session, then "async" when the same block went through
 * CIOCASYNCCRYPT/CIOCASYNCFETCH (32-bit layout) with the same result and the fetched op
 * as submitted; exits 0 when every step went as expected.
 */
#include "../cryptodev.h"

struct session_op32 {
	__u32 cipher, mac, keylen, key, mackeylen, mackey, ses;
};

struct crypt_op32 {
	__u32 ses;
	__u16 op, flags;
	__u32 len, src, dst, mac, iv;
};

#define CIOCGSESSION32	_IOWR('c', 102, struct session_op32)
#define CIOCCRYPT32	_IOWR('c', 104, struct crypt_op32)
#define CIOCFSESSION32	_IOW('c', 103, __u32)
#define CIOCASYNCCRYPT32	_IOW('c', 110, struct crypt_op32)
#define CIOCASYNCFETCH32	_IOR('c', 111, struct crypt_op32)

static long sys3(long nr, long a, long b, long c)
{
	long ret;

	asm volatile ("int $0x80" : "=a"(ret) : "a"(nr), "b"(a), "c"(b), "d"(c) : "memory");
	return ret;
}

#define SYS_exit	1
#define SYS_write	4
#define SYS_open	5
#define SYS_ioctl	54

static void out(const char *s, int n)
{
	sys3(SYS_write, 1, (long)s, n);
}

static void put(const char *s)
{
	int n = 0;

	while (s[n])
		n++;
	out(s, n);
}

static unsigned char key[16], iv[16], src[16], dst[16], adst[16];

/* Submit @cop asynchronously, fetch it back (spinning on EBUSY): 0 when all went well. */
static int async_roundtrip(long fd, struct crypt_op32 *cop)
{
	struct crypt_op32 got = { 0 };
	long ret;
	int i;

	if (sys3(SYS_ioctl, fd, CIOCASYNCCRYPT32, (long)cop))
		return 1;
	do
		ret = sys3(SYS_ioctl, fd, CIOCASYNCFETCH32, (long)&got);
	while (ret == -16);	/* EBUSY: not answered yet */
	if (ret || got.ses != cop->ses || got.dst != cop->dst || got.len != cop->len)
		return 1;
	for (i = 0; i < 16; i++)
		if (adst[i] != dst[i])
			return 1;
	return 0;
}

void _start(void);
void __attribute__((used)) _start(void)
{
	static const char hex[] = "0123456789abcdef";
	struct session_op32 sop = { 0 };
	struct crypt_op32 cop = { 0 };
	char line[33];
	long fd, ret;
	int i, fail = 0;

	fd = sys3(SYS_open, (long)"/dev/cryptodev0", 2 /* O_RDWR */, 0);
	if (fd < 0) {
		put("open failed\n");
		sys3(SYS_exit, 2, 0, 0);
	}
	sop.cipher = CRYPTO_AES_CBC;
	sop.keylen = sizeof(key);
	sop.key = (__u32)(unsigned long)key;
	ret = sys3(SYS_ioctl, fd, CIOCGSESSION32, (long)&sop);
	if (ret) {
		put("session failed\n");
		sys3(SYS_exit, 3, 0, 0);
	}
	cop.ses = sop.ses;
	cop.op = COP_ENCRYPT;
	cop.len = sizeof(src);
	cop.src = (__u32)(unsigned long)src;
	cop.dst = (__u32)(unsigned long)dst;
	cop.iv = (__u32)(unsigned long)iv;
	ret = sys3(SYS_ioctl, fd, CIOCCRYPT32, (long)&cop);
	if (ret) {
		put("crypt failed\n");
		fail = 1;
	}
	for (i = 0; i < 16; i++) {
		line[2 * i] = hex[dst[i] >> 4];
		line[2 * i + 1] = hex[dst[i] & 15];
	}
	line[32] = '\n';
	out(line, 33);

	cop.src = 16;	/* nothing mapped there */
	ret = sys3(SYS_ioctl, fd, CIOCCRYPT32, (long)&cop);
	put(ret == -14 ? "efault\n" : "no efault\n");
	fail |= ret != -14;
	cop.src = (__u32)(unsigned long)src;
	cop.ses = sop.ses + 1000;
	ret = sys3(SYS_ioctl, fd, CIOCCRYPT32, (long)&cop);
	put(ret == -22 ? "einval\n" : "no einval\n");
	fail |= ret != -22;
	cop.ses = sop.ses;
	cop.dst = (__u32)(unsigned long)adst;
	ret = async_roundtrip(fd, &cop);
	put(ret ? "no async\n" : "async\n");
	fail |= ret;
	ret = sys3(SYS_ioctl, fd, CIOCFSESSION32, (long)&sop.ses);
	fail |= ret != 0;
	sys3(SYS_exit, fail, 0, 0);
	for (;;)
		;
}
