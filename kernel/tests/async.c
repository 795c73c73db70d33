// SPDX-License-Identifier: GPL-2.0-only
/*
 * CIOCASYNCCRYPT / CIOCASYNCFETCH through /dev/cryptodevN, using only cryptodev-linux's
 * structs and ioctls (../cryptodev.h). Run in the guest by tests/vm/test_async.py.
 *
 *   async inflight N OUT   N requests in flight from one fd, fetched after poll(); the
 *                          results, in fetch order, go to the file OUT for the test to
 *                          check byte by byte; prints a summary line
 *   async budget           submit until the file is refused; poll()'s bits around it
 *   async close C N        C times: open, N requests in flight, close without fetching
 *   async kill C N         C times: a child puts N requests in flight and is killed
 *   async limits           what a 64 KiB and a 256 KiB CIOCCRYPT and a CIOCASYNCCRYPT get
 *                          (for a device without indirect descriptors or VCD_F_ORDERED)
 *   async suspend FILE N   N requests in flight and a child crypting in a loop while
 *                          "1" is written to FILE (debugfs <dev>/suspend: freeze and
 *                          restore); then what each got, and whether a new file works
 *
 * The requests of "inflight" go round four kinds, each through the 8 sizes in turn:
 * AES-128-CBC with its own IV (separate dst), the same in place, AES-128-CBC on one
 * session with no IV after the first (the chained IV, so order on the device matters)
 * and SHA-256 COP_FLAG_UPDATE on one session, finished by an async COP_FLAG_FINAL.
 * Data: byte j of the buffer of request i is (j * 7 + i) & 0xff.
 */
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include "../cryptodev.h"

static const unsigned int sizes[8] = {
	16, 64, 256, 1024, 4096, 16384, 65536, 262144
};

struct job {
	struct crypt_op cop;
	unsigned char *src;
	unsigned char *dst;		/* NULL for hash updates */
	unsigned int len;
};

static void die(const char *what)
{
	printf("error %s %s\n", what, strerror(errno));
	exit(1);
}

static void pattern(unsigned char *p, size_t n, unsigned int seed)
{
	size_t j;

	for (j = 0; j < n; j++)
		p[j] = (unsigned char)(j * 7 + seed);
}

static void *xmalloc(size_t n)
{
	void *p = malloc(n ? n : 1);

	if (!p)
		die("malloc");
	return p;
}

static int open_dev(void)
{
	const char *path = getenv("CDEV_NODE") ? getenv("CDEV_NODE") : "/dev/cryptodev0";
	int fd = open(path, O_RDWR);

	if (fd < 0)
		die("open");
	return fd;
}

static __u32 session(int fd, __u32 cipher, __u32 mac, unsigned int keyseed)
{
	unsigned char key[16];
	struct session_op sop;

	pattern(key, sizeof(key), keyseed);
	memset(&sop, 0, sizeof(sop));
	sop.cipher = cipher;
	sop.mac = mac;
	if (cipher) {
		sop.key = key;
		sop.keylen = sizeof(key);
	}
	if (ioctl(fd, CIOCGSESSION, &sop))
		die("CIOCGSESSION");
	return sop.ses;
}

/* Submit, waiting with poll(POLLOUT) while the file is full. */
static void submit(int fd, struct crypt_op *cop)
{
	struct pollfd p = { .fd = fd, .events = POLLOUT };

	while (ioctl(fd, CIOCASYNCCRYPT, cop)) {
		if (errno != EBUSY)
			die("CIOCASYNCCRYPT");
		if (poll(&p, 1, 10000) <= 0)
			die("poll for POLLOUT");
	}
}

/* Fetch one, waiting with poll(POLLIN) until it is answered. */
static void fetch(int fd, struct crypt_op *cop, unsigned long *waits)
{
	struct pollfd p = { .fd = fd, .events = POLLIN };

	while (ioctl(fd, CIOCASYNCFETCH, cop)) {
		if (errno != EBUSY)
			die("CIOCASYNCFETCH");
		++*waits;
		if (poll(&p, 1, 10000) <= 0)
			die("poll for POLLIN");
	}
}

static int inflight(unsigned int n, const char *out)
{
	struct job *jobs = calloc(n, sizeof(*jobs));
	unsigned char iv[16], chain_iv[16], digest[32];
	unsigned long waits = 0, order_bad = 0;
	struct crypt_op cop, final;
	__u32 ses, chain, hash;
	unsigned int i;
	FILE *f;
	int fd;

	if (!jobs)
		die("calloc");
	fd = open_dev();
	ses = session(fd, CRYPTO_AES_CBC, 0, 1);
	chain = session(fd, CRYPTO_AES_CBC, 0, 2);
	hash = session(fd, 0, CRYPTO_SHA2_256, 0);
	pattern(chain_iv, sizeof(chain_iv), 3);
	for (i = 0; i < n; i++) {
		struct job *j = &jobs[i];
		unsigned int kind = i % 4;

		j->len = sizes[(i / 4) % 8];
		j->src = xmalloc(j->len);
		pattern(j->src, j->len, i);
		memset(&j->cop, 0, sizeof(j->cop));
		j->cop.op = COP_ENCRYPT;
		j->cop.len = j->len;
		j->cop.src = j->src;
		if (kind == 3) {
			j->cop.ses = hash;
			j->cop.flags = COP_FLAG_UPDATE;
		} else {
			j->dst = kind == 1 ? j->src : xmalloc(j->len);
			j->cop.dst = j->dst;
			j->cop.ses = kind == 2 ? chain : ses;
			if (kind != 2) {
				/* Each its own IV; it is read at submission. */
				pattern(iv, sizeof(iv), 100 + i);
				j->cop.iv = iv;
			} else if (i == 2) {
				j->cop.iv = chain_iv;
			}
		}
		submit(fd, &j->cop);
	}
	memset(&final, 0, sizeof(final));
	final.ses = hash;
	final.op = COP_ENCRYPT;
	final.flags = COP_FLAG_FINAL;
	final.mac = digest;
	submit(fd, &final);

	f = fopen(out, "wb");
	if (!f)
		die("fopen");
	for (i = 0; i <= n; i++) {
		fetch(fd, &cop, &waits);
		/* Submission order: the op as it was submitted comes back. */
		if (i < n ? cop.src != jobs[i].src : cop.mac != digest)
			order_bad++;
		if (i < n && jobs[i].dst &&
		    fwrite(jobs[i].dst, 1, jobs[i].len, f) != jobs[i].len)
			die("fwrite");
	}
	if (fwrite(digest, 1, sizeof(digest), f) != sizeof(digest) || fclose(f))
		die("write");
	if (ioctl(fd, CIOCASYNCFETCH, &cop) == 0 || errno != EBUSY)
		die("fetch past the end");
	printf("inflight %u order_bad %lu poll_waits %lu\n", n, order_bad, waits);
	close(fd);
	return order_bad ? 1 : 0;
}

static short poll_now(int fd)
{
	struct pollfd p = { .fd = fd, .events = POLLIN | POLLOUT };

	if (poll(&p, 1, 0) < 0)
		die("poll");
	return p.revents;
}

static int budget(void)
{
	unsigned char buf[64];
	unsigned long waits = 0;
	unsigned int accepted = 0, fetched = 0;
	struct crypt_op cop;
	short before, full, after;
	int fd, err;

	fd = open_dev();
	pattern(buf, sizeof(buf), 5);
	memset(&cop, 0, sizeof(cop));
	cop.ses = session(fd, CRYPTO_AES_ECB, 0, 4);
	cop.op = COP_ENCRYPT;
	cop.len = sizeof(buf);
	cop.src = buf;
	cop.dst = buf;
	before = poll_now(fd);
	for (;;) {
		if (ioctl(fd, CIOCASYNCCRYPT, &cop) == 0) {
			accepted++;
			continue;
		}
		err = errno;
		break;
	}
	/* Let the device answer all of them before looking. */
	while (!(poll_now(fd) & POLLIN))
		usleep(1000);
	usleep(200000);
	full = poll_now(fd);
	fetch(fd, &cop, &waits);
	fetched++;
	after = poll_now(fd);
	while (ioctl(fd, CIOCASYNCFETCH, &cop) == 0)
		fetched++;
	printf("budget accepted %u refused %s fetched %u\n", accepted, strerror(err), fetched);
	printf("poll empty in=%d out=%d\n", !!(before & POLLIN), !!(before & POLLOUT));
	printf("poll full in=%d out=%d\n", !!(full & POLLIN), !!(full & POLLOUT));
	printf("poll after in=%d out=%d\n", !!(after & POLLIN), !!(after & POLLOUT));
	/* cryptodev-linux refuses COP_FLAG_NO_ZC for async requests. */
	cop.flags = COP_FLAG_NO_ZC;
	err = ioctl(fd, CIOCASYNCCRYPT, &cop) ? errno : 0;
	printf("no_zc %s\n", err ? strerror(err) : "accepted");
	close(fd);
	return 0;
}

/* Open, put @n requests in flight (every size, large ones on host workers); no fetch. */
static int load(unsigned int n)
{
	static unsigned char buf[262144];
	struct crypt_op cop;
	unsigned int i;
	int fd = open_dev();

	pattern(buf, sizeof(buf), 9);
	memset(&cop, 0, sizeof(cop));
	cop.ses = session(fd, CRYPTO_AES_CTR, 0, 6);
	cop.op = COP_ENCRYPT;
	cop.src = buf;
	cop.dst = buf;
	for (i = 0; i < n; i++) {
		cop.len = sizes[i % 8];
		submit(fd, &cop);
	}
	return fd;
}

static int close_cycles(unsigned int cycles, unsigned int n)
{
	unsigned int c;

	for (c = 0; c < cycles; c++)
		close(load(n));
	printf("closed %u\n", cycles);
	return 0;
}

static int kill_cycles(unsigned int cycles, unsigned int n)
{
	unsigned int c;
	int status;

	for (c = 0; c < cycles; c++) {
		int ready[2];
		pid_t pid;
		char b;

		if (pipe(ready))
			die("pipe");
		pid = fork();
		if (pid < 0)
			die("fork");
		if (pid == 0) {
			close(ready[0]);
			load(n);
			if (write(ready[1], "x", 1) != 1)
				_exit(1);
			pause();
			_exit(0);
		}
		close(ready[1]);
		if (read(ready[0], &b, 1) != 1)
			die("child did not get its requests in flight");
		close(ready[0]);
		kill(pid, SIGKILL);
		if (waitpid(pid, &status, 0) != pid || !WIFSIGNALED(status))
			die("waitpid");
	}
	printf("killed %u\n", cycles);
	return 0;
}

static void cbc_once(int fd, __u32 ses, unsigned char *buf, unsigned int len,
		     unsigned char *out)
{
	unsigned char iv[16];
	struct crypt_op cop;

	pattern(iv, sizeof(iv), 77);
	memset(&cop, 0, sizeof(cop));
	cop.ses = ses;
	cop.op = COP_ENCRYPT;
	cop.len = len;
	cop.src = buf;
	cop.dst = out;
	cop.iv = iv;
	if (ioctl(fd, CIOCCRYPT, &cop))
		die("CIOCCRYPT");
}

static int suspend(const char *file, unsigned int n)
{
	unsigned char iv[16], *src = xmalloc(262144), *check = xmalloc(262144);
	unsigned char **dst = calloc(n, sizeof(*dst));
	unsigned long ok = 0, failed = 0, wrong = 0, waits = 0;
	struct crypt_op cop;
	int fd, nfd, sfd, status, err;
	__u32 ses, nses;
	unsigned int i;
	char line[128];
	int report[2], resumed[2], first;
	ssize_t got;
	pid_t pid;

	if (!dst || pipe(report) || pipe(resumed))
		die("setup");
	pattern(src, 262144, 1);
	pattern(iv, sizeof(iv), 77);
	pid = fork();
	if (pid < 0)
		die("fork");
	if (pid == 0) {
		unsigned long done = 0;
		int cfd = open_dev();
		__u32 cses = session(cfd, CRYPTO_AES_CBC, 0, 1);

		close(report[0]);
		for (;;) {
			memset(&cop, 0, sizeof(cop));
			cop.ses = cses;
			cop.op = COP_ENCRYPT;
			cop.len = 4096;
			cop.src = src;
			cop.dst = check;
			cop.iv = iv;
			if (ioctl(cfd, CIOCCRYPT, &cop))
				break;
			done++;
			if (done == 1 && write(report[1], "r", 1) != 1)
				_exit(1);
		}
		first = errno;
		/* After the restore it must go on failing, with EBADF: it predates the reset. */
		if (read(resumed[0], line, 1) != 1)
			_exit(1);
		err = ioctl(cfd, CIOCCRYPT, &cop) ? errno : 0;
		got = snprintf(line, sizeof(line), "child done %lu first %s then %s\n", done,
			       strerror(first), strerror(err));
		if (write(report[1], line, got) != got)
			_exit(1);
		_exit(0);
	}
	close(report[1]);
	if (read(report[0], line, 1) != 1)
		die("child did not start");

	fd = open_dev();
	ses = session(fd, CRYPTO_AES_CBC, 0, 1);
	for (i = 0; i < n; i++) {
		dst[i] = xmalloc(sizes[i % 8]);
		memset(&cop, 0, sizeof(cop));
		cop.ses = ses;
		cop.op = COP_ENCRYPT;
		cop.len = sizes[i % 8];
		cop.src = src;
		cop.dst = dst[i];
		cop.iv = iv;
		submit(fd, &cop);
	}
	sfd = open(file, O_WRONLY);
	if (sfd < 0 || write(sfd, "1", 1) != 1)
		die("suspend");
	close(sfd);
	if (write(resumed[1], "r", 1) != 1)
		die("resumed");

	nfd = open_dev();
	nses = session(nfd, CRYPTO_AES_CBC, 0, 1);
	for (i = 0; i < n; i++) {
		struct pollfd p = { .fd = fd, .events = POLLIN };

		while ((err = ioctl(fd, CIOCASYNCFETCH, &cop) ? errno : 0) == EBUSY) {
			waits++;
			if (poll(&p, 1, 10000) <= 0)
				die("poll");
		}
		if (err == ENODEV) {
			failed++;	/* on the ring when the device was reset */
			continue;
		}
		if (err)
			die("CIOCASYNCFETCH");
		if (cop.dst != dst[i])
			die("fetch order");
		/* Answered before the reset: the same bytes a new file gets now. */
		cbc_once(nfd, nses, src, cop.len, check);
		if (memcmp(check, dst[i], cop.len))
			wrong++;
		ok++;
	}
	err = ioctl(fd, CIOCCRYPT, &cop) ? errno : 0;
	printf("fetched ok %lu failed %lu wrong %lu\n", ok, failed, wrong);
	printf("old file %s\n", err ? strerror(err) : "works");
	cbc_once(nfd, nses, src, 16, check);
	printf("new file %02x%02x%02x%02x\n", check[0], check[1], check[2], check[3]);
	close(nfd);
	close(fd);
	got = read(report[0], line, sizeof(line) - 1);
	if (got <= 0 || waitpid(pid, &status, 0) != pid)
		die("child");
	line[got] = 0;
	fputs(line, stdout);
	return 0;
}

static int limits(void)
{
	static unsigned char buf[262144], out[262144];
	unsigned int lens[2] = { 65536, 262144 }, i;
	unsigned char iv[16] = { 0 };
	struct crypt_op cop;
	int fd = open_dev(), err;

	memset(&cop, 0, sizeof(cop));
	cop.ses = session(fd, CRYPTO_AES_CBC, 0, 1);
	cop.op = COP_ENCRYPT;
	cop.src = buf;
	cop.dst = out;
	cop.iv = iv;
	for (i = 0; i < 2; i++) {
		cop.len = lens[i];
		err = ioctl(fd, CIOCCRYPT, &cop) ? errno : 0;
		printf("crypt %u %s\n", lens[i], err ? strerror(err) : "ok");
	}
	cop.len = 64;
	err = ioctl(fd, CIOCASYNCCRYPT, &cop) ? errno : 0;
	printf("async %s\n", err ? strerror(err) : "ok");
	close(fd);
	return 0;
}

int main(int argc, char **argv)
{
	setvbuf(stdout, NULL, _IOLBF, 0);
	if (argc == 4 && !strcmp(argv[1], "inflight"))
		return inflight(atoi(argv[2]), argv[3]);
	if (argc == 2 && !strcmp(argv[1], "budget"))
		return budget();
	if (argc == 4 && !strcmp(argv[1], "close"))
		return close_cycles(atoi(argv[2]), atoi(argv[3]));
	if (argc == 4 && !strcmp(argv[1], "kill"))
		return kill_cycles(atoi(argv[2]), atoi(argv[3]));
	if (argc == 2 && !strcmp(argv[1], "limits"))
		return limits();
	if (argc == 4 && !strcmp(argv[1], "suspend"))
		return suspend(argv[2], atoi(argv[3]));
	fprintf(stderr, "usage: async inflight N OUT | budget | close C N | kill C N | "
		"limits | suspend FILE N\n");
	return 2;
}
