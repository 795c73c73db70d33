// SPDX-License-Identifier: GPL-2.0-only
/*
 * Many processes hammering /dev/cryptodevN with mixed requests while a killer SIGKILLs
 * them mid-request (tests/vm/test_stress.py runs it in the guest). Only cryptodev-linux's
 * structs and ioctls (../cryptodev.h).
 *
 * The parent first computes the reference answers through the device, one request at a
 * time, and prints an FNV-1a digest of each ("ref NAME HEX" lines) for the host to check
 * against a software implementation. The workers then compare every answer with those
 * references byte for byte: AES-CBC/ECB/CTR/XTS encryption of a prefix of the pattern is
 * a prefix of the reference ciphertext (whole blocks for XTS), so any length can be
 * checked; digests and GCM use a fixed set of lengths.
 *
 * A worker's mix: open/close, session create/free, cipher ops of 16 B .. 256 KiB (copy
 * and zero-copy paths, in place and NO_ZC), SHA-256 and HMAC-SHA256 one-shot and
 * multi-part (COP_FLAG_UPDATE/FINAL), AES-GCM through CIOCAUTHCRYPT.
 *
 * usage: stress [-n NODE] [-p PROCS] [-o OPS] [-k KILL_MS] [-s SEED] [-u] [-r]
 *   -o OPS      operations per worker slot (0: until SIGTERM)
 *   -k KILL_MS  mean time between SIGKILLs of a random worker (0: none); killed
 *               workers are restarted and carry on with their slot's count
 *   -u          the device may go away (hot unplug): ENODEV ends the open file, the
 *               worker reopens the node until it is back and carries on
 *   -r          print the references only
 * The last line is one JSON object with the counts.
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
#include <sys/mman.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "../cryptodev.h"

#define MAX_LEN		(256 * 1024)	/* the device's largest request */
#define MAX_PROCS	256
#define DIGEST_LEN	32
#define GCM_TAG		16

enum kind { CIPHER, HASH, GCM };

struct alg {
	const char *name;
	enum kind kind;
	__u32 cipher, mac, keylen;
	unsigned int block;		/* length granularity of a cipher */
};

static const struct alg algs[] = {
	{ "aes-128-cbc", CIPHER, CRYPTO_AES_CBC, 0, 16, 16 },
	{ "aes-256-cbc", CIPHER, CRYPTO_AES_CBC, 0, 32, 16 },
	{ "aes-128-ctr", CIPHER, CRYPTO_AES_CTR, 0, 16, 1 },
	{ "aes-192-ecb", CIPHER, CRYPTO_AES_ECB, 0, 24, 16 },
	{ "aes-256-xts", CIPHER, CRYPTO_AES_XTS, 0, 64, 16 },
	{ "sha256", HASH, 0, CRYPTO_SHA2_256, 0, 0 },
	{ "hmac-sha256", HASH, 0, CRYPTO_SHA2_256_HMAC, 40, 0 },
	{ "aes-128-gcm", GCM, CRYPTO_AES_GCM, 0, 16, 0 },
};

#define ARRAY_SIZE(a)	(sizeof(a) / sizeof((a)[0]))
#define NALGS		ARRAY_SIZE(algs)

static const __u32 hash_lens[] = { 1, 16, 64, 1000, 4096, 4097, 65536, MAX_LEN };
static const __u32 gcm_lens[] = { 16, 300, 4096, 65536, MAX_LEN - GCM_TAG };

#define NHASH		ARRAY_SIZE(hash_lens)
#define NGCM		ARRAY_SIZE(gcm_lens)

/* Inputs and references: computed before the fork, read-only in the workers. */
static unsigned char plain[MAX_LEN];
static unsigned char keys[NALGS][64];
static unsigned char iv[16], aad[20];
static unsigned char *cipher_ref[NALGS];		/* MAX_LEN of ciphertext */
static unsigned char digest_ref[NALGS][NHASH][DIGEST_LEN];
static unsigned char *gcm_ref[NGCM];			/* ciphertext and tag */

/* Shared with the parent: what each worker slot did. */
struct slot {
	int in_request;			/* inside an ioctl right now (atomic) */
	int done;			/* reached its count (atomic) */
	long ops, mismatches, errors, enodev, reopens;
	int last_errno;
	char last_op[24];
};

static const char usage[] =
	"usage: stress [-n NODE] [-p PROCS] [-o OPS] [-k KILL_MS] [-s SEED] [-u] [-r]";

static struct slot *slots;
static const char *node = "/dev/cryptodev0";
static long ops_per_slot = 1000;
static int unplug_ok;
static sig_atomic_t stop;	/* set by SIGTERM, read with READ_ONCE() */

#define READ_ONCE(x)		__atomic_load_n(&(x), __ATOMIC_RELAXED)
#define WRITE_ONCE(x, v)	__atomic_store_n(&(x), (v), __ATOMIC_RELAXED)

static void pattern(unsigned char *p, size_t n, unsigned int seed)
{
	size_t i;

	for (i = 0; i < n; i++)
		p[i] = (unsigned char)(i * 7 + seed);
}

static uint64_t fnv1a(const unsigned char *p, size_t n)
{
	uint64_t h = 0xcbf29ce484222325ULL;
	size_t i;

	for (i = 0; i < n; i++) {
		h ^= p[i];
		h *= 0x100000001b3ULL;
	}
	return h;
}

static double now(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec + ts.tv_nsec / 1e9;
}

/* xorshift64*: each worker its own stream. */
static uint64_t rnd_state;

static uint64_t rnd(void)
{
	rnd_state ^= rnd_state >> 12;
	rnd_state ^= rnd_state << 25;
	rnd_state ^= rnd_state >> 27;
	return rnd_state * 0x2545f4914f6cdd1dULL;
}

static unsigned int below(unsigned int n)
{
	return (unsigned int)(rnd() % n);
}

/* ---- requests ------------------------------------------------------------ */

static struct slot *me;		/* NULL in the parent */

static int xioctl(int fd, unsigned long req, void *arg)
{
	int ret;

	if (me)
		WRITE_ONCE(me->in_request, 1);
	ret = ioctl(fd, req, arg);
	if (me)
		WRITE_ONCE(me->in_request, 0);
	return ret ? errno : 0;
}

static int new_session(int fd, const struct alg *a, __u32 *ses)
{
	struct session_op sop;
	int err;

	memset(&sop, 0, sizeof(sop));
	if (a->kind == HASH) {
		sop.mac = a->mac;
		sop.mackey = keys[a - algs];
		sop.mackeylen = a->keylen;
	} else {
		sop.cipher = a->cipher;
		sop.key = keys[a - algs];
		sop.keylen = a->keylen;
	}
	err = xioctl(fd, CIOCGSESSION, &sop);
	if (!err)
		*ses = sop.ses;
	return err;
}

static int do_crypt(int fd, __u32 ses, __u16 op, __u16 flags, const void *src, void *dst,
		 __u32 len, const void *civ, void *mac)
{
	struct crypt_op cop;

	memset(&cop, 0, sizeof(cop));
	cop.ses = ses;
	cop.op = op;
	cop.flags = flags;
	cop.len = len;
	cop.src = (__u8 *)src;
	cop.dst = dst;
	cop.iv = (__u8 *)civ;
	cop.mac = mac;
	return xioctl(fd, CIOCCRYPT, &cop);
}

static int gcm(int fd, __u32 ses, __u16 op, const void *src, void *dst, __u32 len)
{
	struct crypt_auth_op caop;

	memset(&caop, 0, sizeof(caop));
	caop.ses = ses;
	caop.op = op;
	caop.len = len;
	caop.auth_len = sizeof(aad);
	caop.auth_src = aad;
	caop.src = (__u8 *)src;
	caop.dst = dst;
	caop.iv = iv;
	caop.iv_len = 12;
	return xioctl(fd, CIOCAUTHCRYPT, &caop);
}

/* ---- references ---------------------------------------------------------- */

static void die(const char *what, int err)
{
	printf("error %s %s\n", what, strerror(err));
	exit(1);
}

static void references(void)
{
	unsigned char *out = malloc(MAX_LEN + GCM_TAG);
	int fd = open(node, O_RDWR), err;
	unsigned int i, j;
	__u32 ses;

	if (!out)
		die("malloc", ENOMEM);
	if (fd < 0)
		die("open", errno);
	pattern(plain, sizeof(plain), 3);
	pattern(iv, sizeof(iv), 2);
	pattern(aad, sizeof(aad), 10);
	for (i = 0; i < NALGS; i++) {
		const struct alg *a = &algs[i];

		pattern(keys[i], sizeof(keys[i]), 20 + i);
		err = new_session(fd, a, &ses);
		if (err)
			die(a->name, err);
		if (a->kind == CIPHER) {
			cipher_ref[i] = malloc(MAX_LEN);
			if (!cipher_ref[i])
				die("malloc", ENOMEM);
			err = do_crypt(fd, ses, COP_ENCRYPT, 0, plain, cipher_ref[i], MAX_LEN, iv,
				    NULL);
			if (err)
				die(a->name, err);
			printf("ref %s %016llx\n", a->name,
			       (unsigned long long)fnv1a(cipher_ref[i], MAX_LEN));
		} else if (a->kind == HASH) {
			for (j = 0; j < NHASH; j++) {
				err = do_crypt(fd, ses, COP_ENCRYPT, 0, plain, NULL, hash_lens[j],
					    NULL, digest_ref[i][j]);
				if (err)
					die(a->name, err);
				printf("ref %s-%u %016llx\n", a->name, hash_lens[j],
				       (unsigned long long)fnv1a(digest_ref[i][j], DIGEST_LEN));
			}
		} else {
			for (j = 0; j < NGCM; j++) {
				gcm_ref[j] = malloc(gcm_lens[j] + GCM_TAG);
				if (!gcm_ref[j])
					die("malloc", ENOMEM);
				err = gcm(fd, ses, COP_ENCRYPT, plain, gcm_ref[j], gcm_lens[j]);
				if (err)
					die(a->name, err);
				printf("ref %s-%u %016llx\n", a->name, gcm_lens[j],
				       (unsigned long long)fnv1a(gcm_ref[j],
								 gcm_lens[j] + GCM_TAG));
			}
		}
		if (ioctl(fd, CIOCFSESSION, &ses))
			die("CIOCFSESSION", errno);
	}
	close(fd);
	free(out);
	fflush(stdout);
}

/* ---- a worker -------------------------------------------------------------- */

struct worker {
	int fd;
	__u32 ses[NALGS];
	int have[NALGS];
	unsigned char *buf;		/* MAX_LEN + GCM_TAG */
};

static void note_error(const char *op, int err)
{
	me->errors++;
	me->last_errno = err;
	snprintf(me->last_op, sizeof(me->last_op), "%s", op);
}

/* The device went away (-u): forget the file, reopen when the node is back. */
static int reopen(struct worker *w)
{
	if (w->fd >= 0)
		close(w->fd);
	memset(w->have, 0, sizeof(w->have));
	for (;;) {
		w->fd = open(node, O_RDWR);
		if (w->fd >= 0) {
			me->reopens++;
			return 0;
		}
		if (!unplug_ok || (errno != ENOENT && errno != ENXIO && errno != ENODEV)) {
			note_error("open", errno);
			return -1;
		}
		if (READ_ONCE(stop))
			return -1;
		usleep(20000);
	}
}

/* An errno from a request: 1 if the file is gone (reopened), 0 otherwise. */
static int failed(struct worker *w, const char *op, int err)
{
	if (err == ENODEV && unplug_ok) {
		me->enodev++;
		reopen(w);
		return 1;
	}
	note_error(op, err);
	return 0;
}

static void check(const char *op, const void *got, const void *want, size_t n)
{
	if (memcmp(got, want, n)) {
		me->mismatches++;
		snprintf(me->last_op, sizeof(me->last_op), "mismatch %s", op);
	}
}

static int session_for(struct worker *w, unsigned int i)
{
	int err;

	if (w->have[i])
		return 0;
	err = new_session(w->fd, &algs[i], &w->ses[i]);
	if (err) {
		failed(w, "CIOCGSESSION", err);
		return -1;
	}
	w->have[i] = 1;
	return 0;
}

/* A length of 16 B .. 256 KiB, spread evenly over the powers of two. */
static __u32 any_len(unsigned int block)
{
	unsigned int shift = 4 + below(15);	/* 16 .. 256 KiB */
	__u32 len = (1U << shift) + below(1U << shift);

	if (len > MAX_LEN)
		len = MAX_LEN;
	len -= len % block;
	return len ? len : block;
}

static void op_cipher(struct worker *w, unsigned int i)
{
	const struct alg *a = &algs[i];
	__u32 len = any_len(a->block);
	__u16 flags = below(8) ? 0 : COP_FLAG_NO_ZC;
	int in_place = !below(8), err;
	const unsigned char *src;

	if (session_for(w, i))
		return;
	if (below(2)) {
		src = plain;
		if (in_place) {
			memcpy(w->buf, plain, len);
			src = w->buf;
		}
		err = do_crypt(w->fd, w->ses[i], COP_ENCRYPT, flags, src, w->buf, len, iv, NULL);
		if (err) {
			failed(w, "encrypt", err);
			return;
		}
		check(a->name, w->buf, cipher_ref[i], len);
	} else {
		src = cipher_ref[i];
		if (in_place) {
			memcpy(w->buf, cipher_ref[i], len);
			src = w->buf;
		}
		err = do_crypt(w->fd, w->ses[i], COP_DECRYPT, flags, src, w->buf, len, iv, NULL);
		if (err) {
			failed(w, "decrypt", err);
			return;
		}
		check(a->name, w->buf, plain, len);
	}
}

static void op_hash(struct worker *w, unsigned int i)
{
	unsigned int j = below(NHASH), parts, p;
	__u32 len = hash_lens[j], off = 0, n;
	unsigned char mac[DIGEST_LEN];
	int err;

	if (session_for(w, i))
		return;
	memset(mac, 0, sizeof(mac));
	if (below(2)) {
		err = do_crypt(w->fd, w->ses[i], COP_ENCRYPT, 0, plain, NULL, len, NULL, mac);
		if (err) {
			failed(w, "hash", err);
			return;
		}
	} else {
		/*
		 * UPDATE parts, then a FINAL with the rest (maybe nothing). Never an empty
		 * UPDATE: cryptodev-linux finalizes on a zero length.
		 */
		parts = 1 + below(4);
		for (p = 0; p < parts && off < len; p++) {
			n = 1 + below(len - off);
			err = do_crypt(w->fd, w->ses[i], COP_ENCRYPT,
				    COP_FLAG_UPDATE | (p ? 0 : COP_FLAG_RESET), plain + off,
				    NULL, n, NULL, mac);
			if (err) {
				failed(w, "hash-update", err);
				return;
			}
			off += n;
		}
		err = do_crypt(w->fd, w->ses[i], COP_ENCRYPT, COP_FLAG_FINAL,
			    len - off ? plain + off : NULL, NULL, len - off, NULL, mac);
		if (err) {
			failed(w, "hash-final", err);
			return;
		}
	}
	check(algs[i].name, mac, digest_ref[i][j], DIGEST_LEN);
}

static void op_gcm(struct worker *w, unsigned int i)
{
	unsigned int j = below(NGCM);
	__u32 len = gcm_lens[j];
	int err;

	if (session_for(w, i))
		return;
	if (below(2)) {
		err = gcm(w->fd, w->ses[i], COP_ENCRYPT, plain, w->buf, len);
		if (err) {
			failed(w, "gcm-encrypt", err);
			return;
		}
		check("gcm-encrypt", w->buf, gcm_ref[j], len + GCM_TAG);
	} else {
		err = gcm(w->fd, w->ses[i], COP_DECRYPT, gcm_ref[j], w->buf, len + GCM_TAG);
		if (err) {
			failed(w, "gcm-decrypt", err);
			return;
		}
		check("gcm-decrypt", w->buf, plain, len);
	}
}

static void op_session_churn(struct worker *w)
{
	unsigned int i = below(NALGS);
	int err;

	if (w->have[i]) {
		err = xioctl(w->fd, CIOCFSESSION, &w->ses[i]);
		if (err) {
			failed(w, "CIOCFSESSION", err);
			return;
		}
		w->have[i] = 0;
	}
	session_for(w, i);
}

static void one_op(struct worker *w)
{
	unsigned int dice = below(100), i;

	if (dice < 2) {			/* open/close: the sessions go with the file */
		close(w->fd);
		w->fd = -1;
		reopen(w);
	} else if (dice < 8) {
		op_session_churn(w);
	} else if (dice < 60) {
		i = below(5);		/* the ciphers come first in algs[] */
		op_cipher(w, i);
	} else if (dice < 85) {
		op_hash(w, 5 + below(2));
	} else {
		op_gcm(w, 7);
	}
}

static void on_term(int sig)
{
	(void)sig;
	stop = 1;
}

static void worker_main(int idx, uint64_t seed)
{
	struct worker w;

	me = &slots[idx];
	signal(SIGTERM, on_term);
	rnd_state = seed * 0x9e3779b97f4a7c15ULL + (uint64_t)idx + 1;
	memset(&w, 0, sizeof(w));
	w.fd = -1;
	w.buf = malloc(MAX_LEN + GCM_TAG);
	if (!w.buf || reopen(&w))
		_exit(2);
	while (!READ_ONCE(stop) && (!ops_per_slot || me->ops < ops_per_slot)) {
		if (w.fd < 0 && reopen(&w))
			_exit(READ_ONCE(stop) ? 0 : 3);
		one_op(&w);
		me->ops++;
	}
	if (ops_per_slot && me->ops >= ops_per_slot)
		WRITE_ONCE(me->done, 1);
	_exit(0);
}

/* ---- the parent: start, kill, restart, collect --------------------------- */

static pid_t pids[MAX_PROCS];
static int generation[MAX_PROCS];

static pid_t start_worker(int idx, uint64_t seed)
{
	pid_t pid = fork();

	if (pid < 0)
		die("fork", errno);
	if (pid == 0)
		worker_main(idx, seed + 1000003ULL * generation[idx]);
	generation[idx]++;
	return pid;
}

/* Collect a worker; wait at most @secs for one that will not die (stuck in the kernel). */
static int reap(pid_t pid, int *status, double secs)
{
	double end = now() + secs;

	for (;;) {
		pid_t got = waitpid(pid, status, WNOHANG);

		if (got == pid)
			return 0;
		if (got < 0 && errno != EINTR)
			return -1;
		if (now() > end)
			return -1;
		usleep(10000);
	}
}

static void print_wchan(pid_t pid)
{
	char path[64], buf[128] = "";
	ssize_t n;
	int fd;

	snprintf(path, sizeof(path), "/proc/%d/wchan", pid);
	fd = open(path, O_RDONLY);
	if (fd >= 0) {
		n = read(fd, buf, sizeof(buf) - 1);
		buf[n > 0 ? n : 0] = 0;
		close(fd);
	}
	fprintf(stderr, "stress: worker %d does not die (wchan %s)\n", pid, buf);
}

static void field(const char *name, long value)
{
	printf(", \"%s\": %ld", name, value);
}

int main(int argc, char **argv)
{
	long kills = 0, kills_mid = 0, crashes = 0, stuck = 0, total_ops, target;
	long mism = 0, errs = 0, enodev = 0, reopens = 0, restarts = 0;
	int procs = 32, kill_ms = 0, refs_only = 0, opt, i, status;
	uint64_t seed = 1;
	struct timespec ts;
	double t0, elapsed;

	while ((opt = getopt(argc, argv, "n:p:o:k:s:ur")) != -1) {
		switch (opt) {
		case 'n':
			node = optarg;
			break;
		case 'p':
			procs = atoi(optarg);
			break;
		case 'o':
			ops_per_slot = atol(optarg);
			break;
		case 'k':
			kill_ms = atoi(optarg);
			break;
		case 's':
			seed = strtoull(optarg, NULL, 0);
			break;
		case 'u':
			unplug_ok = 1;
			break;
		case 'r':
			refs_only = 1;
			break;
		default:
			fprintf(stderr, "%s\n", usage);
			return 2;
		}
	}
	if (procs < 1 || procs > MAX_PROCS || ops_per_slot < 0 || kill_ms < 0) {
		fprintf(stderr, "stress: bad arguments\n");
		return 2;
	}
	references();
	if (refs_only)
		return 0;
	slots = mmap(NULL, sizeof(*slots) * procs, PROT_READ | PROT_WRITE,
		     MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	if (slots == MAP_FAILED)
		die("mmap", errno);
	signal(SIGTERM, on_term);
	rnd_state = seed;
	t0 = now();
	for (i = 0; i < procs; i++)
		pids[i] = start_worker(i, seed);
	target = ops_per_slot * procs;
	for (;;) {
		int live = 0;

		/* Sleep about kill_ms (uniform 0 .. 2 * kill_ms), or poll every 50 ms. */
		long ms = kill_ms ? (long)below(2 * kill_ms + 1) : 50;

		ts.tv_sec = ms / 1000;
		ts.tv_nsec = (ms % 1000) * 1000000L;
		nanosleep(&ts, NULL);
		for (i = 0; i < procs; i++) {
			if (!pids[i])
				continue;
			if (waitpid(pids[i], &status, WNOHANG) == pids[i]) {
				if (!WIFEXITED(status) || WEXITSTATUS(status)) {
					crashes++;	/* not ours: a crash or an open failure */
					fprintf(stderr, "stress: worker %d ended with %#x\n", i,
						status);
				}
				pids[i] = 0;
				if (!READ_ONCE(slots[i].done) && !READ_ONCE(stop) && WIFEXITED(status) &&
				    !WEXITSTATUS(status))
					pids[i] = start_worker(i, seed);
			}
			live += pids[i] != 0;
		}
		if (!live)
			break;
		if (READ_ONCE(stop)) {
			for (i = 0; i < procs; i++)
				if (pids[i])
					kill(pids[i], SIGTERM);
			for (i = 0; i < procs; i++) {
				if (pids[i] && reap(pids[i], &status, 60)) {
					print_wchan(pids[i]);
					stuck++;
				}
				pids[i] = 0;
			}
			break;
		}
		if (!kill_ms)
			continue;
		i = below(procs);
		if (!pids[i] || READ_ONCE(slots[i].done))
			continue;
		kills_mid += READ_ONCE(slots[i].in_request);
		kill(pids[i], SIGKILL);
		kills++;
		if (reap(pids[i], &status, 60)) {
			print_wchan(pids[i]);
			stuck++;
			pids[i] = 0;
			continue;
		}
		WRITE_ONCE(slots[i].in_request, 0);
		pids[i] = start_worker(i, seed);
		restarts++;
	}
	elapsed = now() - t0;
	total_ops = 0;
	for (i = 0; i < procs; i++) {
		total_ops += slots[i].ops;
		mism += slots[i].mismatches;
		errs += slots[i].errors;
		enodev += slots[i].enodev;
		reopens += slots[i].reopens;
		if (slots[i].errors || slots[i].mismatches)
			fprintf(stderr, "stress: worker %d: %ld errors, %ld mismatches, last %s: %s\n",
				i, slots[i].errors, slots[i].mismatches, slots[i].last_op,
				strerror(slots[i].last_errno));
	}
	printf("{\"seconds\": %.2f", elapsed);
	field("procs", procs);
	field("ops", total_ops);
	field("target", target);
	field("mismatches", mism);
	field("errors", errs);
	field("enodev", enodev);
	field("reopens", reopens);
	field("kills", kills);
	field("kills_mid_request", kills_mid);
	field("restarts", restarts);
	field("crashes", crashes);
	field("stuck", stuck);
	printf("}\n");
	return mism || errs || crashes || stuck ? 1 : 0;
}
