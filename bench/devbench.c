// SPDX-License-Identifier: GPL-2.0-only
/*
 * The C side of bench/device_bench.py, run in the guest: requests per second through
 * our /dev/cryptodev0 (cryptodev-linux's ioctls, ../kernel/cryptodev.h) and through
 * AF_ALG bound to a named kernel driver (QEMU's upstream virtio-crypto, or the guest
 * CPU's implementation), with no language runtime in between.
 *
 *   devbench SECONDS ROUNDS SKCIPHER_CPU HASH_CPU
 *
 * One JSON object per line: {"mode", "alg", "who", "size", "ops": [per round]}.
 * mode "sync": one request at a time. mode "inflight32": 32 requests in flight, from
 * one fd with CIOCASYNCCRYPT/CIOCASYNCFETCH and poll() for our device (one session per
 * slot: a session's requests run in order), from 32 threads each with its own AF_ALG
 * socket for AF_ALG (a driver's way to many requests at once from user space).
 * Sizes and contenders are interleaved within each round.
 */
#include <errno.h>
#include <fcntl.h>
#include <linux/if_alg.h>
#include <poll.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "../kernel/cryptodev.h"

#ifndef SOL_ALG
#define SOL_ALG 279
#endif

#define SLOTS 32
/*
 * Upstream virtio-crypto (Linux 6.1 driver, QEMU 7.2 builtin backend) never answers a
 * 256 KiB request: the reader sleeps in D state for good. Measure it up to 64 KiB.
 */
#define UPSTREAM_MAX 65536
#define MAXLEN 262144

static const unsigned int sizes[] = { 64, 256, 1024, 4096, 16384, 65536, 262144 };
#define NSIZES (sizeof(sizes) / sizeof(sizes[0]))

static unsigned char key[32], iv[16];

static void die(const char *what)
{
	fprintf(stderr, "devbench: %s: %s\n", what, strerror(errno));
	exit(1);
}

static double now(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec + ts.tv_nsec / 1e9;
}

static void *buf(void)
{
	unsigned char *p = aligned_alloc(4096, MAXLEN);
	unsigned int i;

	if (!p)
		die("aligned_alloc");
	for (i = 0; i < MAXLEN; i++)
		p[i] = (unsigned char)(i * 7);
	return p;
}

/* ---- our device --------------------------------------------------------------------- */

static int dev_fd;

static __u32 dev_session(int hmac)
{
	struct session_op sop;

	memset(&sop, 0, sizeof(sop));
	if (hmac) {
		sop.mac = CRYPTO_SHA2_256_HMAC;
		sop.mackey = key;
		sop.mackeylen = 32;
	} else {
		sop.cipher = CRYPTO_AES_CBC;
		sop.key = key;
		sop.keylen = 16;
	}
	if (ioctl(dev_fd, CIOCGSESSION, &sop))
		die("CIOCGSESSION");
	return sop.ses;
}

static void dev_op(struct crypt_op *cop, __u32 ses, int hmac, unsigned char *src,
		   unsigned char *dst, unsigned int len)
{
	static unsigned char mac[32];

	memset(cop, 0, sizeof(*cop));
	cop->ses = ses;
	cop->op = COP_ENCRYPT;
	cop->len = len;
	cop->src = src;
	if (hmac) {
		cop->mac = mac;
	} else {
		cop->dst = dst;
		cop->iv = iv;
	}
}

static double dev_sync(int hmac, unsigned int len, double secs)
{
	static unsigned char *src, *dst;
	struct crypt_op cop;
	double t0, t;
	unsigned long n = 0;
	__u32 ses;

	if (!src) {
		src = buf();
		dst = buf();
	}
	ses = dev_session(hmac);
	dev_op(&cop, ses, hmac, src, dst, len);
	t0 = now();
	do {
		if (ioctl(dev_fd, CIOCCRYPT, &cop))
			die("CIOCCRYPT");
		n++;
		t = now();
	} while (t - t0 < secs);
	ioctl(dev_fd, CIOCFSESSION, &ses);
	return n / (t - t0);
}

static double dev_inflight(int hmac, unsigned int len, double secs)
{
	static unsigned char *src[SLOTS], *dst[SLOTS];
	struct pollfd p = { .fd = dev_fd, .events = POLLIN };
	struct crypt_op cops[SLOTS], got;
	__u32 ses[SLOTS];
	unsigned long n = 0, out = 0;
	double t0, t;
	int i;

	for (i = 0; i < SLOTS; i++) {
		if (!src[i]) {
			src[i] = buf();
			dst[i] = buf();
		}
		ses[i] = dev_session(hmac);
		dev_op(&cops[i], ses[i], hmac, src[i], dst[i], len);
	}
	t0 = now();
	for (i = 0; i < SLOTS; i++, out++)
		if (ioctl(dev_fd, CIOCASYNCCRYPT, &cops[i]))
			die("CIOCASYNCCRYPT");
	for (;;) {
		if (ioctl(dev_fd, CIOCASYNCFETCH, &got)) {
			if (errno != EBUSY)
				die("CIOCASYNCFETCH");
			if (poll(&p, 1, 10000) <= 0)
				die("poll");
			continue;
		}
		n++;
		out--;
		t = now();
		if (t - t0 >= secs)
			break;
		/* The fetched op says which slot it was: submit that slot again. */
		if (ioctl(dev_fd, CIOCASYNCCRYPT, &got))
			die("CIOCASYNCCRYPT");
		out++;
	}
	while (out) {
		if (ioctl(dev_fd, CIOCASYNCFETCH, &got) == 0) {
			out--;
			continue;
		}
		if (errno != EBUSY || poll(&p, 1, 10000) <= 0)
			die("drain");
	}
	for (i = 0; i < SLOTS; i++)
		ioctl(dev_fd, CIOCFSESSION, &ses[i]);
	return n / (t - t0);
}

/* ---- AF_ALG ------------------------------------------------------------------------- */

static int alg_open(const char *type, const char *driver, int keylen)
{
	struct sockaddr_alg sa = { .salg_family = AF_ALG };
	int tfm, op, big = 4 * MAXLEN;

	strncpy((char *)sa.salg_type, type, sizeof(sa.salg_type) - 1);
	strncpy((char *)sa.salg_name, driver, sizeof(sa.salg_name) - 1);
	tfm = socket(AF_ALG, SOCK_SEQPACKET, 0);
	if (tfm < 0 || bind(tfm, (struct sockaddr *)&sa, sizeof(sa)))
		die(driver);
	if (setsockopt(tfm, SOL_ALG, ALG_SET_KEY, key, keylen))
		die("ALG_SET_KEY");
	op = accept(tfm, NULL, 0);
	if (op < 0)
		die("accept");
	close(tfm);
	/* One sendmsg of the largest request: lift the socket's send buffer limit. */
	setsockopt(op, SOL_SOCKET, SO_SNDBUFFORCE, &big, sizeof(big));
	return op;
}

static void alg_op(int op, int hmac, unsigned char *src, unsigned char *dst, unsigned int len)
{
	char cbuf[CMSG_SPACE(sizeof(__u32)) + CMSG_SPACE(sizeof(struct af_alg_iv) + 16)];
	struct iovec io = { .iov_base = src, .iov_len = len };
	struct msghdr msg = { .msg_iov = &io, .msg_iovlen = 1 };
	struct af_alg_iv *aiv;
	struct cmsghdr *c;
	unsigned char mac[32];

	if (hmac) {
		if (send(op, src, len, 0) != (ssize_t)len || read(op, mac, 32) != 32)
			die("hash");
		return;
	}
	memset(cbuf, 0, sizeof(cbuf));
	msg.msg_control = cbuf;
	msg.msg_controllen = sizeof(cbuf);
	c = CMSG_FIRSTHDR(&msg);
	c->cmsg_level = SOL_ALG;
	c->cmsg_type = ALG_SET_OP;
	c->cmsg_len = CMSG_LEN(sizeof(__u32));
	*(__u32 *)CMSG_DATA(c) = ALG_OP_ENCRYPT;
	c = CMSG_NXTHDR(&msg, c);
	c->cmsg_level = SOL_ALG;
	c->cmsg_type = ALG_SET_IV;
	c->cmsg_len = CMSG_LEN(sizeof(*aiv) + 16);
	aiv = (struct af_alg_iv *)CMSG_DATA(c);
	aiv->ivlen = 16;
	memcpy(aiv->iv, iv, 16);
	if (sendmsg(op, &msg, 0) != (ssize_t)len || read(op, dst, len) != (ssize_t)len)
		die("skcipher");
}

struct worker {
	pthread_t thread;
	const char *driver;
	int hmac;
	unsigned int len;
	double until;
	unsigned long n;
	unsigned char *src, *dst;
};

static void *alg_loop(void *arg)
{
	struct worker *w = arg;
	int op = alg_open(w->hmac ? "hash" : "skcipher", w->driver, w->hmac ? 32 : 16);

	do {
		alg_op(op, w->hmac, w->src, w->dst, w->len);
		w->n++;
	} while (now() < w->until);
	close(op);
	return NULL;
}

static double alg_run(const char *driver, int hmac, unsigned int len, double secs, int nthreads)
{
	static struct worker w[SLOTS];
	unsigned long n = 0;
	double t0 = now();
	int i;

	for (i = 0; i < nthreads; i++) {
		if (!w[i].src) {
			w[i].src = buf();
			w[i].dst = buf();
		}
		w[i].driver = driver;
		w[i].hmac = hmac;
		w[i].len = len;
		w[i].until = t0 + secs;
		w[i].n = 0;
		if (pthread_create(&w[i].thread, NULL, alg_loop, &w[i]))
			die("pthread_create");
	}
	for (i = 0; i < nthreads; i++) {
		pthread_join(w[i].thread, NULL);
		n += w[i].n;
	}
	return n / (now() - t0);
}

/* ---- main --------------------------------------------------------------------------- */

struct contender {
	const char *mode, *alg, *who, *driver;
	int hmac, inflight;
	unsigned int maxlen;		/* 0: every size */
	double ops[NSIZES][16];
};

int main(int argc, char **argv)
{
	struct contender cs[] = {
		{ .mode = "sync", .alg = "aes-cbc", .who = "virtio" },
		{ .mode = "sync", .alg = "aes-cbc", .who = "upstream",
		  .driver = "virtio_crypto_aes_cbc", .maxlen = UPSTREAM_MAX },
		{ .mode = "sync", .alg = "aes-cbc", .who = "guest-cpu" },
		{ .mode = "sync", .alg = "hmac-sha256", .who = "virtio", .hmac = 1 },
		{ .mode = "sync", .alg = "hmac-sha256", .who = "guest-cpu", .hmac = 1 },
		{ .mode = "inflight32", .alg = "aes-cbc", .who = "virtio", .inflight = 1 },
		{ .mode = "inflight32", .alg = "aes-cbc", .who = "upstream",
		  .driver = "virtio_crypto_aes_cbc", .inflight = 1, .maxlen = UPSTREAM_MAX },
		{ .mode = "inflight32", .alg = "aes-cbc", .who = "guest-cpu", .inflight = 1 },
	};
	unsigned int ncs = sizeof(cs) / sizeof(cs[0]), c, s;
	double secs;
	int rounds, r;

	if (argc != 5) {
		fprintf(stderr, "usage: devbench SECONDS ROUNDS SKCIPHER_CPU HASH_CPU\n");
		return 2;
	}
	secs = atof(argv[1]);
	rounds = atoi(argv[2]);
	if (rounds < 1 || rounds > 16 || secs <= 0) {
		fprintf(stderr, "devbench: 1-16 rounds of a positive time\n");
		return 2;
	}
	for (c = 0; c < ncs; c++)
		if (!strcmp(cs[c].who, "guest-cpu"))
			cs[c].driver = cs[c].hmac ? argv[4] : argv[3];
	memset(key, 0x42, sizeof(key));
	dev_fd = open(getenv("CDEV_NODE") ? getenv("CDEV_NODE") : "/dev/cryptodev0", O_RDWR);
	if (dev_fd < 0)
		die("open");
	for (r = 0; r < rounds; r++)
		for (s = 0; s < NSIZES; s++)
			for (c = 0; c < ncs; c++) {
				struct contender *k = &cs[c];

				if (k->maxlen && sizes[s] > k->maxlen)
					continue;
				if (getenv("DEVBENCH_VERBOSE"))
					fprintf(stderr, "%s %s %s %u\n", k->mode, k->alg, k->who,
						sizes[s]);
				if (k->driver)
					k->ops[s][r] = alg_run(k->driver, k->hmac, sizes[s], secs,
							       k->inflight ? SLOTS : 1);
				else if (k->inflight)
					k->ops[s][r] = dev_inflight(k->hmac, sizes[s], secs);
				else
					k->ops[s][r] = dev_sync(k->hmac, sizes[s], secs);
			}
	for (c = 0; c < ncs; c++)
		for (s = 0; s < NSIZES && (!cs[c].maxlen || sizes[s] <= cs[c].maxlen); s++) {
			printf("{\"mode\": \"%s\", \"alg\": \"%s\", \"who\": \"%s\", \"size\": %u, "
			       "\"ops\": [", cs[c].mode, cs[c].alg, cs[c].who, sizes[s]);
			for (r = 0; r < rounds; r++)
				printf("%s%.1f", r ? ", " : "", cs[c].ops[s][r]);
			printf("]}\n");
		}
	return 0;
}
