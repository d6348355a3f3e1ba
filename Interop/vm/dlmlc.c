/*
 * dlmlc - the interop lab's lock client. Runs inside the lab VMs (static binary in the
 * initramfs) and drives the kernel DLM through its device interface only:
 * /dev/dlm-control and /dev/dlm_<ls>, the ABI of <linux/dlm_device.h>. No libdlm,
 * no dlm_controld: the cluster-manager side (configfs, sysfs, uevents) is done here
 * the way dlm_controld does it.
 *
 * Build: gcc -O2 -static -Wall -o dlmlc dlmlc.c
 *
 * All times printed are CLOCK_MONOTONIC seconds (the guest's uptime clock).
 *
 *   dlmlc sockaddr FILE IP            one write() of a 128-byte sockaddr_storage (configfs comms addr)
 *   dlmlc gid NAME                    lockspace global id: CRC-32 of "dlm:ls:NAME\0" (dlm_controld rule)
 *   dlmlc join LS --id GID [--timeout S] [--nodir] NODE[:WEIGHT]...
 *                                     create LS through /dev/dlm-control and answer the kernel's
 *                                     "online" uevent: id, [nodir=1,] configfs members, control=1,
 *                                     event_done=0
 *   dlmlc create LS                   only the create write (blocks until someone answers the uevent)
 *   dlmlc remove LS                   only the remove write (FORCEFREE; the CM answers "offline")
 *   dlmlc leave LS [--timeout S]      remove LS (FORCEFREE), answer the "offline" uevent, rmdir configfs.
 *                                     Prints how long the remove write took: on the last lockspace that
 *                                     includes the 3.2 FIN handshake with every peer.
 *   dlmlc stop LS                     control=0 (first half of dlm_controld's membership barrier)
 *   dlmlc members LS [--no-stop] NODE[:WEIGHT]...
 *                                     make configfs members == list, then control=1 (second half)
 *   dlmlc agent LS FIFO LOG           long-lived lock owner: one command per line from FIFO, events
 *                                     with timestamps to LOG (see agent_help below)
 *   dlmlc bench LS RES COUNT [MODE] [FLAG...]
 *                                     COUNT x (request MODE, wait grant, unlock, wait), on its own fd;
 *                                     DLMLC_PROGRESS=N logs a PROGRESS line every N iterations
 *   dlmlc waitlog FILE REGEX [COUNT [TIMEOUT_MS]]
 *                                     wait until COUNT lines of FILE match REGEX (POSIX ERE); print
 *                                     the COUNT-th (exit 1 and say so on timeout)
 *   dlmlc serve TTY                   the VM's control channel (see cmd_serve)
 *   dlmlc sockkill [PORT [PEER_IP]]   SOCK_DESTROY (sock_diag, like `ss -K`) every non-listening TCP
 *                                     socket with local or remote PORT (default 21064)
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <ctype.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <linux/dlm.h>
#include <linux/dlm_device.h>
#include <linux/inet_diag.h>
#include <linux/netlink.h>
#include <linux/sock_diag.h>
#include <netinet/in.h>
#include <poll.h>
#include <regex.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <termios.h>
#include <time.h>
#include <unistd.h>

#define CFG "/sys/kernel/config/dlm/cluster"
#define SYS "/sys/kernel/dlm"
#define MAXNODES 64

/* ------------------------------------------------------------------ helpers */
static double now(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec + ts.tv_nsec / 1e9;
}

static void fail(const char *fmt, ...) __attribute__((noreturn, format(printf, 1, 2)));
static void fail(const char *fmt, ...)
{
	va_list ap;
	fprintf(stdout, "%.6f ERROR ", now());
	va_start(ap, fmt);
	vfprintf(stdout, fmt, ap);
	va_end(ap);
	fputc('\n', stdout);
	fflush(stdout);
	exit(1);
}

static int write_file(const char *path, const void *buf, size_t len)
{
	int fd = open(path, O_WRONLY);
	if (fd < 0) {
		printf("%.6f open %s: %s\n", now(), path, strerror(errno));
		return -1;
	}
	ssize_t n = write(fd, buf, len);
	int e = errno;
	close(fd);
	if (n != (ssize_t)len) {
		printf("%.6f write %s: %s\n", now(), path, n < 0 ? strerror(e) : "short write");
		return -1;
	}
	return 0;
}

static int write_str(const char *path, const char *s)
{
	return write_file(path, s, strlen(s));
}

static const char *mode_names[] = { "NL", "CR", "CW", "PR", "PW", "EX" };

static int mode_of(const char *s)
{
	for (int i = 0; i < 6; i++)
		if (!strcasecmp(s, mode_names[i]))
			return i;
	if (!strcasecmp(s, "IV"))
		return -1;
	char *e;
	long v = strtol(s, &e, 10);
	if (*e || v < 0 || v > 5)
		return -2;
	return (int)v;
}

static const char *mode_name(int m)
{
	return m >= 0 && m <= 5 ? mode_names[m] : "IV";
}

static const struct {
	const char *n;
	uint32_t v;
} lkf[] = {
	{ "NOQUEUE", DLM_LKF_NOQUEUE },	{ "CANCEL", DLM_LKF_CANCEL },
	{ "CONVERT", DLM_LKF_CONVERT },	{ "VALBLK", DLM_LKF_VALBLK },
	{ "QUECVT", DLM_LKF_QUECVT },	{ "IVVALBLK", DLM_LKF_IVVALBLK },
	{ "CONVDEADLK", DLM_LKF_CONVDEADLK }, { "PERSISTENT", DLM_LKF_PERSISTENT },
	{ "NODLCKWT", DLM_LKF_NODLCKWT }, { "NODLCKBLK", DLM_LKF_NODLCKBLK },
	{ "EXPEDITE", DLM_LKF_EXPEDITE }, { "NOQUEUEBAST", DLM_LKF_NOQUEUEBAST },
	{ "HEADQUE", DLM_LKF_HEADQUE },	{ "NOORDER", DLM_LKF_NOORDER },
	{ "ORPHAN", DLM_LKF_ORPHAN },	{ "ALTPR", DLM_LKF_ALTPR },
	{ "ALTCW", DLM_LKF_ALTCW },	{ "FORCEUNLOCK", DLM_LKF_FORCEUNLOCK },
	{ "TIMEOUT", DLM_LKF_TIMEOUT },
};

/* a flag name, or a number (0x..) for raw flag bits; -1 if unknown */
static int64_t flag_of(const char *s)
{
	for (unsigned k = 0; k < sizeof(lkf) / sizeof(lkf[0]); k++)
		if (!strcasecmp(s, lkf[k].n))
			return lkf[k].v;
	char *e;
	unsigned long v = strtoul(s, &e, 0);
	if (*s && !*e)
		return (int64_t)v;
	return -1;
}

static const char *status_name(int st)
{
	static char b[32];
	switch (st) {
	case 0: return "OK";
	case -EAGAIN: return "EAGAIN";
	case -EDEADLK: return "EDEADLK";
	case -EINPROGRESS: return "EINPROGRESS";
	case -DLM_EUNLOCK: return "EUNLOCK";
	case -DLM_ECANCEL: return "ECANCEL";
	case -ETIMEDOUT: return "ETIMEDOUT";
	case -EBUSY: return "EBUSY";
	case -EINVAL: return "EINVAL";
	case -ENOENT: return "ENOENT";
	case -ENOMEM: return "ENOMEM";
	}
	snprintf(b, sizeof(b), "%d", st);
	return b;
}

/* ------------------------------------------------------------------ sockaddr, gid */
static int cmd_sockaddr(int argc, char **argv)
{
	if (argc != 4) {
		fprintf(stderr, "usage: dlmlc sockaddr FILE IP\n");
		return 2;
	}
	struct sockaddr_storage ss;
	memset(&ss, 0, sizeof(ss));
	struct sockaddr_in *s4 = (struct sockaddr_in *)&ss;
	struct sockaddr_in6 *s6 = (struct sockaddr_in6 *)&ss;
	if (inet_pton(AF_INET, argv[3], &s4->sin_addr) == 1) {
		s4->sin_family = AF_INET;
	} else if (inet_pton(AF_INET6, argv[3], &s6->sin6_addr) == 1) {
		s6->sin6_family = AF_INET6;
	} else {
		fprintf(stderr, "dlmlc: bad address %s\n", argv[3]);
		return 2;
	}
	/* the kernel accepts exactly sizeof(struct sockaddr_storage) in one write */
	return write_file(argv[2], &ss, sizeof(ss)) ? 1 : 0;
}

static uint32_t crc32_le(const unsigned char *p, size_t len)
{
	uint32_t c = 0xffffffff;
	while (len--) {
		c ^= *p++;
		for (int k = 0; k < 8; k++)
			c = (c >> 1) ^ (0xedb88320 & -(c & 1));
	}
	return ~c;
}

static uint32_t global_id(const char *ls)
{
	char buf[128];
	int n = snprintf(buf, sizeof(buf), "dlm:ls:%s", ls);
	return crc32_le((unsigned char *)buf, n + 1); /* the NUL is included */
}

/* ------------------------------------------------------------------ uevents */
static int uevent_open(void)
{
	int s = socket(AF_NETLINK, SOCK_DGRAM | SOCK_CLOEXEC, NETLINK_KOBJECT_UEVENT);
	if (s < 0)
		return -1;
	struct sockaddr_nl sa = { .nl_family = AF_NETLINK, .nl_groups = 1 };
	if (bind(s, (struct sockaddr *)&sa, sizeof(sa))) {
		close(s);
		return -1;
	}
	return s;
}

/* wait up to timeout_ms for "<action>@.../dlm/<ls>"; 1 = seen, 0 = timeout */
static int uevent_wait(int s, const char *action, const char *ls, int timeout_ms)
{
	char want[200];
	snprintf(want, sizeof(want), "%s@", action);
	char tail[120];
	snprintf(tail, sizeof(tail), "/dlm/%s", ls);
	double end = now() + timeout_ms / 1000.0;
	while (s >= 0) {
		int left = (int)((end - now()) * 1000);
		if (left <= 0)
			return 0;
		struct pollfd p = { .fd = s, .events = POLLIN };
		if (poll(&p, 1, left) <= 0)
			continue;
		char buf[4096];
		ssize_t n = recv(s, buf, sizeof(buf) - 1, 0);
		if (n <= 0)
			continue;
		buf[n] = 0;
		size_t tl = strlen(tail), bl = strlen(buf);
		if (!strncmp(buf, want, strlen(want)) && bl >= tl && !strcmp(buf + bl - tl, tail))
			return 1;
	}
	return 0;
}

/* ------------------------------------------------------------------ lockspaces */
static void init_req(struct dlm_write_request *req, int cmd)
{
	req->version[0] = DLM_DEVICE_VERSION_MAJOR;
	req->version[1] = DLM_DEVICE_VERSION_MINOR;
	req->version[2] = DLM_DEVICE_VERSION_PATCH;
	req->cmd = cmd;
	req->is64bit = sizeof(long) == 8;
}

static int open_retry(const char *path, int flags, int ms)
{
	for (int i = 0; i <= ms / 10; i++) {
		int fd = open(path, flags);
		if (fd >= 0 || errno != ENOENT)
			return fd;
		usleep(10000);
	}
	return -1;
}

/* the create write: returns the misc minor of /dev/dlm_<ls>, or -errno */
static int create_lockspace(const char *ls)
{
	size_t len = sizeof(struct dlm_write_request) + strlen(ls) + 1;
	struct dlm_write_request *req = calloc(1, len);
	init_req(req, DLM_USER_CREATE_LOCKSPACE);
	req->i.lspace.flags = 0;
	strcpy(req->i.lspace.name, ls);
	int fd = open_retry("/dev/dlm-control", O_RDWR, 5000);
	if (fd < 0)
		return -errno;
	int rv = write(fd, req, len);
	int e = errno;
	close(fd);
	free(req);
	return rv < 0 ? -e : rv;
}

struct member {
	int id, weight;
};

static int parse_members(char **argv, int argc, struct member *m)
{
	int n = 0;
	for (int i = 0; i < argc && n < MAXNODES; i++) {
		char *c;
		m[n].id = (int)strtol(argv[i], &c, 10);
		m[n].weight = *c == ':' ? atoi(c + 1) : 1;
		if (m[n].id <= 0) {
			fprintf(stderr, "dlmlc: bad member %s\n", argv[i]);
			exit(2);
		}
		n++;
	}
	return n;
}

static int add_member(const char *ls, struct member *m)
{
	char p[256], v[32];
	snprintf(p, sizeof(p), CFG "/spaces/%s/nodes/%d", ls, m->id);
	if (mkdir(p, 0755) && errno != EEXIST) {
		printf("%.6f mkdir %s: %s\n", now(), p, strerror(errno));
		return -1;
	}
	snprintf(p, sizeof(p), CFG "/spaces/%s/nodes/%d/nodeid", ls, m->id);
	snprintf(v, sizeof(v), "%d", m->id);
	if (write_str(p, v))
		return -1;
	snprintf(p, sizeof(p), CFG "/spaces/%s/nodes/%d/weight", ls, m->id);
	snprintf(v, sizeof(v), "%d", m->weight);
	return write_str(p, v);
}

static int ls_write(const char *ls, const char *file, const char *val)
{
	char p[256];
	snprintf(p, sizeof(p), SYS "/%s/%s", ls, file);
	return write_str(p, val);
}

static void rm_config(const char *ls);

static int cmd_join(int argc, char **argv)
{
	const char *ls = NULL;
	uint32_t gid = 0;
	int have_gid = 0, timeout = 60, nodir = 0;
	struct member m[MAXNODES];
	int n = 0;
	char *rest[MAXNODES];
	int nrest = 0;
	for (int i = 2; i < argc; i++) {
		if (!strcmp(argv[i], "--id") && i + 1 < argc) {
			gid = strtoul(argv[++i], 0, 0);
			have_gid = 1;
		} else if (!strcmp(argv[i], "--timeout") && i + 1 < argc) {
			timeout = atoi(argv[++i]);
		} else if (!strcmp(argv[i], "--nodir")) {
			nodir = 1;
		} else if (!ls) {
			ls = argv[i];
		} else if (nrest < MAXNODES) {
			rest[nrest++] = argv[i];
		}
	}
	if (!ls || !nrest) {
		fprintf(stderr, "usage: dlmlc join LS [--id GID] [--timeout S] [--nodir] NODE[:WEIGHT]...\n");
		return 2;
	}
	if (!have_gid)
		gid = global_id(ls);
	n = parse_members(rest, nrest, m);

	double t0 = now();
	printf("%.6f JOIN ls=%s gid=0x%08x members=%d\n", t0, ls, gid, n);
	fflush(stdout);
	int us = uevent_open();
	pid_t pid = fork();
	if (pid == 0) {
		int rv = create_lockspace(ls);
		printf("%.6f CREATE ls=%s rv=%d%s%s\n", now(), ls, rv, rv < 0 ? " " : "",
		       rv < 0 ? strerror(-rv) : "");
		fflush(stdout);
		_exit(rv < 0 ? 1 : 0);
	}
	/* the kernel registers /sys/kernel/dlm/<ls>, emits "online" and waits in do_uevent() */
	char ev[256];
	snprintf(ev, sizeof(ev), SYS "/%s/event_done", ls);
	double end = t0 + timeout;
	const char *how = NULL;
	while (!how) {
		if (uevent_wait(us, "online", ls, 20))
			how = "uevent";
		else if (us < 0 && !access(ev, F_OK))
			how = "sysfs";
		int st;
		if (!how && waitpid(pid, &st, WNOHANG) == pid)
			fail("join %s: create failed before the online uevent", ls);
		if (!how && now() > end) {
			kill(pid, SIGKILL);
			fail("join %s: no online uevent in %d s", ls, timeout);
		}
	}
	double t1 = now();
	printf("%.6f ONLINE ls=%s (%s) after %.3f s\n", t1, ls, how, t1 - t0);
	/* dlm_controld's order: id, configfs members, control=1, event_done=0 */
	char v[32];
	snprintf(v, sizeof(v), "%u", gid);
	if (ls_write(ls, "id", v))
		fail("join %s: writing id", ls);
	/* dlm_controld writes nodir before the first start; it cannot be cleared */
	if (nodir && ls_write(ls, "nodir", "1"))
		fail("join %s: writing nodir", ls);
	char p[256];
	snprintf(p, sizeof(p), CFG "/spaces/%s", ls);
	if (mkdir(p, 0755) && errno != EEXIST)
		fail("mkdir %s: %s", p, strerror(errno));
	for (int i = 0; i < n; i++)
		if (add_member(ls, &m[i]))
			fail("join %s: adding member %d", ls, m[i].id);
	if (ls_write(ls, "control", "1") || ls_write(ls, "event_done", "0"))
		fail("join %s: control/event_done", ls);
	printf("%.6f CONFIGURED ls=%s id members control=1 event_done=0\n", now(), ls);
	fflush(stdout);
	/* the create write returns once recovery is done everywhere. If the first recovery
	   fails (a config mismatch, say), the kernel leaves the lockspace group: it emits
	   "offline" and waits for our answer before the create returns the error. */
	int st = -1;
	while (waitpid(pid, &st, WNOHANG) != pid) {
		if (now() > end) {
			kill(pid, SIGKILL);
			fail("join %s: not joined after %d s (do all members join?)", ls, timeout);
		}
		if (us >= 0 && uevent_wait(us, "offline", ls, 2)) {
			printf("%.6f OFFLINE ls=%s during the join: the first recovery failed; answering\n", now(), ls);
			fflush(stdout);
			ls_write(ls, "event_done", "0");
			rm_config(ls);
		} else if (us < 0) {
			usleep(2000);
		}
	}
	if (us >= 0)
		close(us);
	int ok = WIFEXITED(st) && WEXITSTATUS(st) == 0;
	printf("%.6f %s ls=%s in %.3f s\n", now(), ok ? "JOINED" : "JOINFAILED", ls, now() - t0);
	return ok ? 0 : 1;
}

static int cmd_create(int argc, char **argv)
{
	if (argc != 3)
		return 2;
	double t0 = now();
	int rv = create_lockspace(argv[2]);
	printf("%.6f CREATE ls=%s rv=%d%s%s in %.3f s\n", now(), argv[2], rv, rv < 0 ? " " : "",
	       rv < 0 ? strerror(-rv) : "", now() - t0);
	return rv < 0;
}

/* node ids configured as members of ls in configfs; returns the count */
static int config_members(const char *ls, int *ids, int max)
{
	char d[300];
	snprintf(d, sizeof(d), CFG "/spaces/%s/nodes", ls);
	DIR *dir = opendir(d);
	int n = 0;
	if (!dir)
		return 0;
	struct dirent *e;
	while ((e = readdir(dir)) && n < max)
		if (e->d_name[0] != '.')
			ids[n++] = atoi(e->d_name);
	closedir(dir);
	return n;
}

static void rm_config(const char *ls)
{
	char d[300];
	int ids[MAXNODES];
	int n = config_members(ls, ids, MAXNODES);
	for (int i = 0; i < n; i++) {
		snprintf(d, sizeof(d), CFG "/spaces/%s/nodes/%d", ls, ids[i]);
		rmdir(d);
	}
	snprintf(d, sizeof(d), CFG "/spaces/%s", ls);
	rmdir(d);
}

static int cmd_leave(int argc, char **argv)
{
	if (argc < 3)
		return 2;
	const char *ls = argv[2];
	int timeout = argc > 4 && !strcmp(argv[3], "--timeout") ? atoi(argv[4]) : 240;
	char dev[128];
	struct stat stt;
	snprintf(dev, sizeof(dev), "/dev/dlm_%s", ls);
	if (stat(dev, &stt))
		fail("leave: %s: %s", dev, strerror(errno));
	struct dlm_write_request req;
	memset(&req, 0, sizeof(req));
	init_req(&req, DLM_USER_REMOVE_LOCKSPACE);
	req.i.lspace.minor = minor(stt.st_rdev);
	req.i.lspace.flags = DLM_USER_LSFLG_FORCEFREE;
	int us = uevent_open();
	double t0 = now();
	printf("%.6f LEAVE ls=%s\n", t0, ls);
	fflush(stdout);
	pid_t pid = fork();
	if (pid == 0) {
		int fd = open("/dev/dlm-control", O_RDWR);
		double a = now();
		int rv = fd < 0 ? -1 : write(fd, &req, sizeof(req));
		int e = errno;
		printf("%.6f REMOVE ls=%s rv=%d%s%s write took %.3f s\n", now(), ls, rv,
		       rv < 0 ? " " : "", rv < 0 ? strerror(e) : "", now() - a);
		fflush(stdout);
		_exit(rv < 0 ? 1 : 0);
	}
	/* the kernel deregisters /dev/dlm_<ls>, emits "offline", waits for event_done */
	const char *how = NULL;
	double end = t0 + timeout;
	while (!how) {
		if (uevent_wait(us, "offline", ls, 20))
			how = "uevent";
		else if (us < 0 && access(dev, F_OK))
			how = "device gone";
		int st;
		if (!how && waitpid(pid, &st, WNOHANG) == pid) {
			printf("%.6f LEAVEFAILED ls=%s (remove returned before the offline uevent)\n", now(), ls);
			return 1;
		}
		if (!how && now() > end)
			fail("leave %s: no offline uevent in %d s", ls, timeout);
	}
	if (us >= 0)
		close(us);
	printf("%.6f OFFLINE ls=%s (%s) after %.3f s\n", now(), ls, how, now() - t0);
	ls_write(ls, "event_done", "0");
	int st = -1;
	while (waitpid(pid, &st, WNOHANG) != pid) {
		if (now() > end) {
			kill(pid, SIGKILL);
			fail("leave %s: remove not done after %d s (FIN wait? reconfigure the others)", ls, timeout);
		}
		usleep(2000);
	}
	rm_config(ls);
	int ok = WIFEXITED(st) && WEXITSTATUS(st) == 0;
	printf("%.6f %s ls=%s in %.3f s\n", now(), ok ? "LEFT" : "LEAVEFAILED", ls, now() - t0);
	return ok ? 0 : 1;
}

/* the application's half of a leave: the REMOVE write; "offline" is the CM's (dlm-peer agent) */
static int cmd_remove(int argc, char **argv)
{
	if (argc != 3)
		return 2;
	const char *ls = argv[2];
	char dev[128];
	struct stat stt;
	snprintf(dev, sizeof(dev), "/dev/dlm_%s", ls);
	if (stat(dev, &stt))
		fail("remove: %s: %s", dev, strerror(errno));
	struct dlm_write_request req;
	memset(&req, 0, sizeof(req));
	init_req(&req, DLM_USER_REMOVE_LOCKSPACE);
	req.i.lspace.minor = minor(stt.st_rdev);
	req.i.lspace.flags = DLM_USER_LSFLG_FORCEFREE;
	int fd = open("/dev/dlm-control", O_RDWR);
	double t0 = now();
	printf("%.6f REMOVING ls=%s\n", t0, ls);
	fflush(stdout);
	int rv = fd < 0 ? -1 : write(fd, &req, sizeof(req));
	int e = errno;
	printf("%.6f REMOVE ls=%s rv=%d%s%s write took %.3f s\n", now(), ls, rv, rv < 0 ? " " : "",
	       rv < 0 ? strerror(e) : "", now() - t0);
	return rv < 0;
}

static int cmd_stop(int argc, char **argv)
{
	if (argc != 3)
		return 2;
	double t0 = now();
	if (ls_write(argv[2], "control", "0"))
		return 1;
	printf("%.6f STOPPED ls=%s in %.3f s\n", now(), argv[2], now() - t0);
	return 0;
}

static int cmd_members(int argc, char **argv)
{
	if (argc < 3)
		return 2;
	const char *ls = argv[2];
	int i = 3, nostop = 0;
	if (i < argc && !strcmp(argv[i], "--no-stop")) {
		nostop = 1;
		i++;
	}
	struct member m[MAXNODES];
	int n = parse_members(argv + i, argc - i, m);
	double t0 = now();
	if (!nostop && ls_write(ls, "control", "0"))
		return 1;
	char p[300];
	int have[MAXNODES];
	int nh = config_members(ls, have, MAXNODES);
	for (int k = 0; k < nh; k++) {
		int want = 0;
		for (int j = 0; j < n; j++)
			want |= m[j].id == have[k];
		if (want)
			continue;
		snprintf(p, sizeof(p), CFG "/spaces/%s/nodes/%d", ls, have[k]);
		if (rmdir(p))
			printf("%.6f rmdir %s: %s\n", now(), p, strerror(errno));
		else
			printf("%.6f REMOVED member %d\n", now(), have[k]);
	}
	for (int j = 0; j < n; j++) {
		int exists = 0;
		for (int k = 0; k < nh; k++)
			exists |= have[k] == m[j].id;
		if (exists)
			continue;
		if (add_member(ls, &m[j]))
			return 1;
		printf("%.6f ADDED member %d weight %d\n", now(), m[j].id, m[j].weight);
	}
	if (ls_write(ls, "control", "1"))
		return 1;
	printf("%.6f RECONFIGURED ls=%s members=%d in %.3f s\n", now(), ls, n, now() - t0);
	return 0;
}

/* ------------------------------------------------------------------ locks */
#define MAXLOCKS 4096
struct alock {
	char tag[64];
	char res[DLM_RESNAME_MAXLEN + 1];
	int reslen;
	uint32_t lkid;
	int used, unlocking;
	char lvb[DLM_USER_LVB_LEN];
	struct dlm_lksb lksb;
};
static struct alock *locks;
static int nlocks;
static FILE *alog;
static int cast_marker, bast_marker;

static void L(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void L(const char *fmt, ...)
{
	va_list ap;
	fprintf(alog, "%.6f ", now());
	va_start(ap, fmt);
	vfprintf(alog, fmt, ap);
	va_end(ap);
	fputc('\n', alog);
	fflush(alog);
}

static int ls_open(const char *ls)
{
	char dev[128];
	snprintf(dev, sizeof(dev), "/dev/dlm_%s", ls);
	int fd = open_retry(dev, O_RDWR, 5000);
	if (fd < 0)
		fail("open %s: %s", dev, strerror(errno));
	return fd;
}

static struct alock *find_tag(const char *tag)
{
	for (int i = 0; i < nlocks; i++)
		if (locks[i].used && !strcmp(locks[i].tag, tag))
			return &locks[i];
	return NULL;
}

static struct alock *new_lock(const char *tag)
{
	struct alock *a = find_tag(tag);
	if (!a)
		for (int i = 0; i < nlocks; i++)
			if (!locks[i].used) {
				a = &locks[i];
				break;
			}
	if (!a) {
		if (nlocks >= MAXLOCKS)
			return NULL;
		a = &locks[nlocks++];
	}
	memset(a, 0, sizeof(*a));
	a->used = 1;
	snprintf(a->tag, sizeof(a->tag), "%s", tag);
	return a;
}

/* lock/convert/unlock write; returns the write's result (lkid for new requests) or -errno */
static int lock_write(int fd, int cmd, struct alock *a, int mode, uint32_t flags, const char *lvb)
{
	char buf[sizeof(struct dlm_write_request) + DLM_RESNAME_MAXLEN + 8];
	struct dlm_write_request *req = (void *)buf;
	memset(buf, 0, sizeof(buf));
	init_req(req, cmd);
	req->i.lock.mode = mode;
	req->i.lock.flags = flags;
	req->i.lock.lkid = a->lkid;
	req->i.lock.castparam = a;
	req->i.lock.castaddr = &cast_marker;
	req->i.lock.bastparam = a;
	req->i.lock.bastaddr = &bast_marker;
	req->i.lock.lksb = &a->lksb;
	a->lksb.sb_lvbptr = a->lvb;
	if (lvb)
		memcpy(req->i.lock.lvb, lvb, DLM_USER_LVB_LEN);
	size_t len = sizeof(struct dlm_write_request);
	if (cmd == DLM_USER_LOCK && !(flags & DLM_LKF_CONVERT)) {
		req->i.lock.namelen = a->reslen;
		memcpy(req->i.lock.name, a->res, a->reslen);
		len += a->reslen;
	}
	int rv = write(fd, req, len);
	return rv < 0 ? -errno : rv;
}

static void lvb_str(const char *lvb, char *out, size_t outlen)
{
	size_t o = snprintf(out, outlen, "\"");
	for (int i = 0; i < DLM_USER_LVB_LEN && lvb[i] && o < outlen - 4; i++)
		o += snprintf(out + o, outlen - o, "%c",
			      isprint((unsigned char)lvb[i]) && lvb[i] != '"' ? lvb[i] : '.');
	o += snprintf(out + o, outlen - o, "\" hex=");
	for (int i = 0; i < DLM_USER_LVB_LEN && o < outlen - 3; i++)
		o += snprintf(out + o, outlen - o, "%02x", (unsigned char)lvb[i]);
}

/* read one callback. kind: 0 completion, 1 blocking; returns -1 on error */
struct cb {
	int kind, status, bast_mode, sbflags, has_lvb;
	uint32_t lkid;
	struct alock *a;
	char lvb[DLM_USER_LVB_LEN];
};

static int read_cb(int fd, struct cb *cb)
{
	char buf[sizeof(struct dlm_lock_result) + DLM_USER_LVB_LEN + 64];
	int n = read(fd, buf, sizeof(buf));
	if (n < (int)sizeof(struct dlm_lock_result))
		return -1;
	struct dlm_lock_result *r = (void *)buf;
	memset(cb, 0, sizeof(*cb));
	cb->a = r->user_astparam;
	cb->lkid = r->lksb.sb_lkid;
	if (r->user_astaddr == &bast_marker) {
		cb->kind = 1;
		cb->bast_mode = r->bast_mode;
		return 0;
	}
	cb->status = r->lksb.sb_status;
	cb->sbflags = r->lksb.sb_flags;
	if (r->lvb_offset && r->lvb_offset + DLM_USER_LVB_LEN <= (unsigned)n) {
		memcpy(cb->lvb, buf + r->lvb_offset, DLM_USER_LVB_LEN);
		cb->has_lvb = 1;
	}
	return 0;
}

static void agent_callback(int fd)
{
	struct cb cb;
	if (read_cb(fd, &cb)) {
		if (errno != EAGAIN)
			L("ERR read callback: %s", strerror(errno));
		return;
	}
	struct alock *a = cb.a;
	if (a < locks || a >= locks + MAXLOCKS) {
		L("ERR callback with unknown param %p", (void *)a);
		return;
	}
	if (cb.kind == 1) {
		L("BAST %s lkid=0x%x res=%s mode=%s", a->tag, a->lkid, a->res, mode_name(cb.bast_mode));
		return;
	}
	char lv[160] = "";
	if (cb.has_lvb) {
		memcpy(a->lvb, cb.lvb, DLM_USER_LVB_LEN);
		char s[140];
		lvb_str(a->lvb, s, sizeof(s));
		snprintf(lv, sizeof(lv), " lvb=%s", s);
	}
	if (!a->lkid)
		a->lkid = cb.lkid;
	L("CAST %s lkid=0x%x res=%s status=%s sbflags=0x%x%s", a->tag, cb.lkid, a->res,
	  status_name(cb.status), cb.sbflags, lv);
	/* an unlocked lock frees its tag; a failed request or conversion keeps it
	   (unlocking it again is harmless and reports the kernel's answer) */
	if (cb.status == -DLM_EUNLOCK || (a->unlocking && cb.status == -DLM_ECANCEL))
		a->used = 0;
	a->unlocking = 0;
}

static int split(char *line, char **w, int max)
{
	int n = 0;
	char *save, *t = strtok_r(line, " \t\r\n", &save);
	while (t && n < max) {
		w[n++] = t;
		t = strtok_r(NULL, " \t\r\n", &save);
	}
	return n;
}

static int hexval(char c)
{
	return isdigit((unsigned char)c) ? c - '0' : (tolower((unsigned char)c) - 'a' + 10);
}

/* trailing words: flags, lvb=TEXT or lvbhex=HEX. Returns 0 or -1 (error logged) */
static int parse_opts(char **w, int n, uint32_t *flags, char *lvb, int *have_lvb)
{
	*flags = 0;
	*have_lvb = 0;
	for (int i = 0; i < n; i++) {
		if (!strncmp(w[i], "lvb=", 4)) {
			memset(lvb, 0, DLM_USER_LVB_LEN);
			strncpy(lvb, w[i] + 4, DLM_USER_LVB_LEN);
			*have_lvb = 1;
		} else if (!strncmp(w[i], "lvbhex=", 7)) {
			const char *h = w[i] + 7;
			memset(lvb, 0, DLM_USER_LVB_LEN);
			for (int k = 0; k < DLM_USER_LVB_LEN && isxdigit((unsigned char)h[2 * k]) &&
					isxdigit((unsigned char)h[2 * k + 1]); k++)
				lvb[k] = hexval(h[2 * k]) << 4 | hexval(h[2 * k + 1]);
			*have_lvb = 1;
		} else {
			int64_t f = flag_of(w[i]);
			if (f < 0) {
				L("ERR unknown flag %s", w[i]);
				return -1;
			}
			*flags |= (uint32_t)f;
		}
	}
	return 0;
}

static int progress; /* log a PROGRESS line every this many loop iterations (0: never) */
static int do_loop(int fd, const char *tag, const char *res, int mode, int count, uint32_t flags);
static int do_many(int fd, const char *tag, const char *prefix, int mode, int count, uint32_t flags);

/* returns 1 on quit */
static int agent_cmd(int fd, char *line)
{
	char *w[40];
	char copy[1024];
	size_t cl = strnlen(line, sizeof(copy) - 1);
	memcpy(copy, line, cl);
	copy[cl] = 0;
	copy[strcspn(copy, "\r\n")] = 0;
	int n = split(line, w, 40);
	if (!n)
		return 0;
	char lvb[DLM_USER_LVB_LEN];
	int have_lvb = 0;
	uint32_t f = 0;
	L("CMD %s", copy);
	if (!strcmp(w[0], "quit"))
		return 1;
	if (!strcmp(w[0], "mark"))
		return 0;
	if (!strcmp(w[0], "lock") && n >= 4) {
		int mode = mode_of(w[3]);
		if (mode < 0 || parse_opts(w + 4, n - 4, &f, lvb, &have_lvb)) {
			L("ERR bad mode or flags");
			return 0;
		}
		if (strlen(w[2]) > DLM_RESNAME_MAXLEN) {
			L("ERR resource name longer than %d", DLM_RESNAME_MAXLEN);
			return 0;
		}
		struct alock *a = new_lock(w[1]);
		if (!a) {
			L("ERR too many locks");
			return 0;
		}
		snprintf(a->res, sizeof(a->res), "%s", w[2]);
		a->reslen = strlen(a->res);
		if (have_lvb)
			memcpy(a->lvb, lvb, sizeof(lvb));
		int rv = lock_write(fd, DLM_USER_LOCK, a, mode, f, have_lvb ? lvb : NULL);
		if (rv > 0)
			a->lkid = rv;
		L("REQ %s res=%s mode=%s flags=0x%x rv=%d%s%s lkid=0x%x", a->tag, a->res, mode_name(mode), f,
		  rv, rv < 0 ? " " : "", rv < 0 ? strerror(-rv) : "", a->lkid);
		if (rv < 0)
			a->used = 0;
		return 0;
	}
	if (!strcmp(w[0], "convert") && n >= 3) {
		struct alock *a = find_tag(w[1]);
		int mode = mode_of(w[2]);
		if (!a || mode < 0 || parse_opts(w + 3, n - 3, &f, lvb, &have_lvb)) {
			L("ERR no lock %s, or bad mode/flags", w[1]);
			return 0;
		}
		f |= DLM_LKF_CONVERT;
		if (have_lvb)
			memcpy(a->lvb, lvb, sizeof(lvb));
		int rv = lock_write(fd, DLM_USER_LOCK, a, mode, f, a->lvb);
		L("CONV %s lkid=0x%x mode=%s flags=0x%x rv=%d%s%s", a->tag, a->lkid, mode_name(mode), f, rv,
		  rv < 0 ? " " : "", rv < 0 ? strerror(-rv) : "");
		return 0;
	}
	if ((!strcmp(w[0], "unlock") || !strcmp(w[0], "cancel")) && n >= 2) {
		struct alock *a = find_tag(w[1]);
		if (!a || parse_opts(w + 2, n - 2, &f, lvb, &have_lvb)) {
			L("ERR no lock %s, or bad flags", w[1]);
			return 0;
		}
		if (!strcmp(w[0], "cancel"))
			f |= DLM_LKF_CANCEL;
		if (have_lvb)
			memcpy(a->lvb, lvb, sizeof(lvb));
		a->unlocking = 1;
		int rv = lock_write(fd, DLM_USER_UNLOCK, a, 0, f, a->lvb);
		L("%s %s lkid=0x%x flags=0x%x rv=%d%s%s", f & DLM_LKF_CANCEL ? "CANC" : "UNLK", a->tag,
		  a->lkid, f, rv, rv < 0 ? " " : "", rv < 0 ? strerror(-rv) : "");
		return 0;
	}
	if (!strcmp(w[0], "loop") && n >= 5) {
		int mode = mode_of(w[3]);
		if (mode < 0 || parse_opts(w + 5, n - 5, &f, lvb, &have_lvb)) {
			L("ERR bad mode or flags");
			return 0;
		}
		do_loop(fd, w[1], w[2], mode, atoi(w[4]), f);
		return 0;
	}
	if (!strcmp(w[0], "many") && n >= 5) {
		int mode = mode_of(w[3]);
		if (mode < 0 || parse_opts(w + 5, n - 5, &f, lvb, &have_lvb)) {
			L("ERR bad mode or flags");
			return 0;
		}
		do_many(fd, w[1], w[2], mode, atoi(w[4]), f);
		return 0;
	}
	L("ERR bad command (lock TAG RES MODE [FLAG..] [lvb=T|lvbhex=H] | convert TAG MODE [..] | "
	  "unlock TAG [..] | cancel TAG | loop TAG RES MODE COUNT [FLAG..] | "
	  "many TAG PREFIX MODE COUNT [FLAG..] | mark TEXT | quit)");
	return 0;
}

/* COUNT locks on PREFIX0, PREFIX1, ... taken with up to 256 requests in flight and held
   until the agent exits (closing the device releases them). Not tracked by tag: for
   loading a lockspace (recovery benchmarks). Logs MANYDONE with the count and the time. */
static int do_many(int fd, const char *tag, const char *prefix, int mode, int count, uint32_t flags)
{
	struct alock *ms = calloc(count > 0 ? count : 1, sizeof(*ms));
	if (!ms) {
		L("ERR many: out of memory");
		return -1;
	}
	double t0 = now();
	int sent = 0, done = 0, ok = 0, failed = 0;
	while (done < count) {
		while (sent < count && sent - done < 256) {
			struct alock *a = &ms[sent];
			snprintf(a->res, sizeof(a->res), "%s%d", prefix, sent);
			a->reslen = strlen(a->res);
			int rv = lock_write(fd, DLM_USER_LOCK, a, mode, flags, NULL);
			sent++;
			if (rv < 0) {
				failed++;
				done++;
			}
		}
		struct pollfd p = { .fd = fd, .events = POLLIN };
		if (poll(&p, 1, 1000) <= 0)
			continue;
		struct cb cb;
		if (read_cb(fd, &cb))
			continue;
		if (cb.kind == 1)
			continue;           /* a blocking callback: these locks are only held */
		done++;
		if (cb.status == 0)
			ok++;
		else
			failed++;
	}
	double t = now() - t0;
	L("MANYDONE %s prefix=%s mode=%s count=%d ok=%d failed=%d secs=%.3f", tag, prefix, mode_name(mode),
	  count, ok, failed, t);
	return failed ? -1 : 0;
}

/* COUNT x (request + grant + unlock + EUNLOCK) on one resource; other callbacks are
   logged as they arrive. Logs LOOPDONE with latency stats. */
static int do_loop(int fd, const char *tag, const char *res, int mode, int count, uint32_t flags)
{
	struct alock *a = new_lock(tag);
	if (!a) {
		L("ERR too many locks");
		return -1;
	}
	snprintf(a->res, sizeof(a->res), "%s", res);
	a->reslen = strlen(a->res);
	double t0 = now(), tmin = 1e9, tmax = 0;
	int ok = 0, failed = 0;
	for (int i = 0; i < count; i++) {
		double s = now();
		a->lkid = 0;
		a->used = 1;
		int rv = lock_write(fd, DLM_USER_LOCK, a, mode, flags, NULL);
		if (rv < 0) {
			L("LOOPERR %s iter=%d request rv=%d", tag, i, rv);
			failed++;
			continue;
		}
		a->lkid = rv;
		int phase = 0; /* 0 waiting grant, 1 waiting unlock */
		while (phase < 2) {
			struct cb cb;
			if (read_cb(fd, &cb)) {
				if (errno == EINTR || errno == EAGAIN) {
					struct pollfd p = { .fd = fd, .events = POLLIN };
					poll(&p, 1, 1000);
					continue;
				}
				L("LOOPERR %s iter=%d read: %s", tag, i, strerror(errno));
				return -1;
			}
			if (cb.a != a) { /* some other lock's callback */
				if (cb.a >= locks && cb.a < locks + MAXLOCKS)
					L("%s %s lkid=0x%x status=%s mode=%s (during loop)",
					  cb.kind ? "BAST" : "CAST", cb.a->tag, cb.lkid, status_name(cb.status),
					  mode_name(cb.bast_mode));
				continue;
			}
			if (cb.kind == 1)
				continue; /* blocking callback on our own loop lock: ignore */
			if (phase == 0) {
				if (cb.status) {
					L("LOOPERR %s iter=%d grant status=%s", tag, i, status_name(cb.status));
					failed++;
					phase = 2;
					break;
				}
				rv = lock_write(fd, DLM_USER_UNLOCK, a, 0, 0, NULL);
				if (rv < 0) {
					L("LOOPERR %s iter=%d unlock rv=%d", tag, i, rv);
					failed++;
					phase = 2;
					break;
				}
				phase = 1;
			} else {
				if (cb.status != -DLM_EUNLOCK) {
					L("LOOPERR %s iter=%d unlock status=%s", tag, i, status_name(cb.status));
					failed++;
				} else {
					ok++;
				}
				phase = 2;
			}
		}
		if (progress && (i + 1) % progress == 0)
			L("PROGRESS %s done=%d ok=%d failed=%d", tag, i + 1, ok, failed);
		double d = now() - s;
		if (d < tmin)
			tmin = d;
		if (d > tmax)
			tmax = d;
	}
	a->used = 0;
	double tot = now() - t0;
	L("LOOPDONE %s res=%s mode=%s count=%d ok=%d failed=%d total=%.3f avg_ms=%.3f min_ms=%.3f max_ms=%.3f",
	  tag, res, mode_name(mode), count, ok, failed, tot, count ? tot * 1000 / count : 0,
	  count ? tmin * 1000 : 0, tmax * 1000);
	return failed ? -1 : 0;
}

static int cmd_agent(int argc, char **argv)
{
	if (argc != 5) {
		fprintf(stderr, "usage: dlmlc agent LS FIFO LOG\n");
		return 2;
	}
	locks = calloc(MAXLOCKS, sizeof(*locks));
	alog = fopen(argv[4], "a");
	if (!alog)
		fail("%s: %s", argv[4], strerror(errno));
	if (mkfifo(argv[3], 0600) && errno != EEXIST)
		fail("mkfifo %s: %s", argv[3], strerror(errno));
	int ff = open(argv[3], O_RDWR | O_NONBLOCK);
	if (ff < 0)
		fail("%s: %s", argv[3], strerror(errno));
	int fd = ls_open(argv[2]);
	L("AGENT pid=%d ls=%s ready", getpid(), argv[2]);
	char lb[16384];
	size_t ll = 0;
	for (;;) {
		struct pollfd p[2] = { { .fd = ff, .events = POLLIN }, { .fd = fd, .events = POLLIN } };
		if (poll(p, 2, -1) < 0) {
			if (errno == EINTR)
				continue;
			fail("poll: %s", strerror(errno));
		}
		if (p[1].revents & POLLIN)
			agent_callback(fd);
		if (!(p[0].revents & POLLIN))
			continue;
		int k = read(ff, lb + ll, sizeof(lb) - 1 - ll);
		if (k <= 0)
			continue;
		ll += k;
		char *nl;
		while ((nl = memchr(lb, '\n', ll))) {
			*nl = 0;
			char line[1024];
			size_t linelen = strnlen(lb, sizeof(line) - 1);
			memcpy(line, lb, linelen);
			line[linelen] = 0;
			size_t used = nl - lb + 1;
			memmove(lb, nl + 1, ll - used);
			ll -= used;
			/* log pending callbacks first so the log keeps their order */
			struct pollfd q = { .fd = fd, .events = POLLIN };
			while (poll(&q, 1, 0) > 0 && (q.revents & POLLIN))
				agent_callback(fd);
			if (agent_cmd(fd, line)) {
				L("AGENT exit");
				return 0;
			}
		}
		if (ll == sizeof(lb) - 1)
			ll = 0; /* an absurdly long line: drop it */
	}
}

static int cmd_bench(int argc, char **argv)
{
	if (argc < 5) {
		fprintf(stderr, "usage: dlmlc bench LS RES COUNT [MODE] [FLAG...]\n");
		return 2;
	}
	locks = calloc(MAXLOCKS, sizeof(*locks));
	alog = stdout;
	int mode = argc > 5 ? mode_of(argv[5]) : DLM_LOCK_EX;
	uint32_t f = 0;
	for (int i = 6; i < argc; i++) {
		int64_t v = flag_of(argv[i]);
		if (v < 0) {
			fprintf(stderr, "dlmlc: unknown flag %s\n", argv[i]);
			return 2;
		}
		f |= v;
	}
	if (mode < 0) {
		fprintf(stderr, "dlmlc: bad mode\n");
		return 2;
	}
	int fd = ls_open(argv[2]);
	const char *pe = getenv("DLMLC_PROGRESS");
	progress = pe ? atoi(pe) : 0;
	return do_loop(fd, "bench", argv[3], mode, atoi(argv[4]), f) ? 1 : 0;
}

/* ------------------------------------------------------------------ waitlog */
static int cmd_waitlog(int argc, char **argv)
{
	if (argc < 4) {
		fprintf(stderr, "usage: dlmlc waitlog FILE REGEX [COUNT [TIMEOUT_MS]]\n");
		return 2;
	}
	int count = argc > 4 ? atoi(argv[4]) : 1;
	int timeout = argc > 5 ? atoi(argv[5]) : 30000;
	regex_t re;
	if (count < 1)
		count = 1;
	if (regcomp(&re, argv[3], REG_EXTENDED | REG_NOSUB)) {
		fprintf(stderr, "dlmlc: bad regex %s\n", argv[3]);
		return 2;
	}
	double end = now() + timeout / 1000.0;
	char line[4096], last[4096] = "";
	for (;;) {
		FILE *f = fopen(argv[2], "r");
		int hits = 0;
		if (f) {
			while (fgets(line, sizeof(line), f)) {
				if (regexec(&re, line, 0, NULL, 0))
					continue;
				if (++hits == count) {
					fputs(line, stdout); /* the COUNT-th matching line */
					fclose(f);
					return 0;
				}
				line[strcspn(line, "\n")] = 0;
				memcpy(last, line, sizeof(last));
			}
			fclose(f);
		}
		if (now() > end) {
			printf("TIMEOUT waiting for match #%d of /%s/ in %s (have %d%s%s)\n", count,
			       argv[3], argv[2], hits, hits ? "; last: " : "", last);
			return 1;
		}
		usleep(3000);
	}
}

/* ------------------------------------------------------------------ sockkill */
static int diag_sock(void)
{
	int s = socket(AF_NETLINK, SOCK_RAW | SOCK_CLOEXEC, NETLINK_SOCK_DIAG);
	if (s < 0)
		fail("netlink sock_diag: %s (is inet_diag/tcp_diag loaded?)", strerror(errno));
	return s;
}

static int cmd_sockkill(int argc, char **argv)
{
	int port = argc > 2 ? atoi(argv[2]) : 21064;
	const char *peer = argc > 3 ? argv[3] : NULL;
	struct in_addr peer4;
	if (peer && inet_pton(AF_INET, peer, &peer4) != 1) {
		fprintf(stderr, "dlmlc: sockkill: IPv4 peer only\n");
		return 2;
	}
	struct {
		struct nlmsghdr nlh;
		struct inet_diag_req_v2 r;
	} req;
	/* 1. dump established-ish TCP sockets */
	int s = diag_sock();
	memset(&req, 0, sizeof(req));
	req.nlh.nlmsg_len = sizeof(req);
	req.nlh.nlmsg_type = SOCK_DIAG_BY_FAMILY;
	req.nlh.nlmsg_flags = NLM_F_REQUEST | NLM_F_DUMP;
	req.nlh.nlmsg_seq = 1;
	req.r.sdiag_family = AF_INET;
	req.r.sdiag_protocol = IPPROTO_TCP;
	req.r.idiag_states = ~(1u << 10); /* everything except TCP_LISTEN */
	if (send(s, &req, sizeof(req), 0) < 0)
		fail("sock_diag dump: %s", strerror(errno));
	struct inet_diag_sockid ids[256];
	int nids = 0, done = 0;
	char buf[32768];
	while (!done) {
		ssize_t n = recv(s, buf, sizeof(buf), 0);
		if (n <= 0)
			fail("sock_diag recv: %s", strerror(errno));
		for (struct nlmsghdr *h = (void *)buf; NLMSG_OK(h, n); h = NLMSG_NEXT(h, n)) {
			if (h->nlmsg_type == NLMSG_DONE) {
				done = 1;
				break;
			}
			if (h->nlmsg_type == NLMSG_ERROR)
				fail("sock_diag dump error %d", ((struct nlmsgerr *)NLMSG_DATA(h))->error);
			struct inet_diag_msg *m = NLMSG_DATA(h);
			if (ntohs(m->id.idiag_sport) != port && ntohs(m->id.idiag_dport) != port)
				continue;
			if (peer && m->id.idiag_dst[0] != peer4.s_addr)
				continue;
			if (nids < 256)
				ids[nids++] = m->id;
		}
	}
	close(s);
	/* 2. destroy each one */
	int killed = 0, failed = 0;
	for (int i = 0; i < nids; i++) {
		s = diag_sock();
		memset(&req, 0, sizeof(req));
		req.nlh.nlmsg_len = sizeof(req);
		req.nlh.nlmsg_type = SOCK_DESTROY;
		req.nlh.nlmsg_flags = NLM_F_REQUEST | NLM_F_ACK;
		req.nlh.nlmsg_seq = 2 + i;
		req.r.sdiag_family = AF_INET;
		req.r.sdiag_protocol = IPPROTO_TCP;
		req.r.idiag_states = ~0u;
		req.r.id = ids[i];
		char a1[32], a2[32];
		inet_ntop(AF_INET, &ids[i].idiag_src[0], a1, sizeof(a1));
		inet_ntop(AF_INET, &ids[i].idiag_dst[0], a2, sizeof(a2));
		int err = 0;
		if (send(s, &req, sizeof(req), 0) < 0) {
			err = -errno;
		} else {
			ssize_t n = recv(s, buf, sizeof(buf), 0);
			struct nlmsghdr *h = (void *)buf;
			if (n > 0 && NLMSG_OK(h, n) && h->nlmsg_type == NLMSG_ERROR)
				err = ((struct nlmsgerr *)NLMSG_DATA(h))->error;
		}
		close(s);
		printf("%.6f SOCK_DESTROY %s:%d -> %s:%d : %s\n", now(), a1, ntohs(ids[i].idiag_sport), a2,
		       ntohs(ids[i].idiag_dport), err ? strerror(-err) : "ok");
		if (err)
			failed++;
		else
			killed++;
	}
	printf("%.6f SOCKKILL port=%d killed=%d failed=%d\n", now(), port, killed, failed);
	return failed || !killed ? 1 : 0;
}

/* ------------------------------------------------------------------ serve */
/* The VM's control channel: "<id> <command>" lines from TTY; each runs with sh -c, its
   stdout/stderr on TTY, then "\n@@END <id> <rc>". Bytes are read one at a time and a
   signal never loses a partial line (the shell's `read` builtin could: SIGCHLD of a
   finishing background job cut the head off the next command). */
static int cmd_serve(int argc, char **argv)
{
	if (argc != 3) {
		fprintf(stderr, "usage: dlmlc serve TTY\n");
		return 2;
	}
	int fd = open(argv[2], O_RDWR | O_NOCTTY | O_CLOEXEC);
	if (fd < 0)
		fail("open %s: %s", argv[2], strerror(errno));
	struct termios t;
	if (!tcgetattr(fd, &t)) {
		cfmakeraw(&t);
		t.c_cc[VMIN] = 1;
		t.c_cc[VTIME] = 0;
		tcsetattr(fd, TCSANOW, &t);
	}
	signal(SIGCHLD, SIG_DFL);
	char line[8192];
	size_t n = 0;
	for (;;) {
		char ch;
		ssize_t k = read(fd, &ch, 1);
		if (k < 0 && errno == EINTR)
			continue;
		if (k <= 0) {
			usleep(100000);
			continue;
		}
		if (ch == '\r')
			continue;
		if (ch != '\n') {
			if (n < sizeof(line) - 1)
				line[n++] = ch;
			continue;
		}
		line[n] = 0;
		n = 0;
		char *sp = strchr(line, ' ');
		if (!sp || sp == line)
			continue; /* not "<id> <command>": ignore */
		*sp = 0;
		const char *id = line, *cmd = sp + 1;
		pid_t pid = fork();
		if (pid == 0) {
			int nul = open("/dev/null", O_RDONLY);
			dup2(nul, 0);
			dup2(fd, 1);
			dup2(fd, 2);
			signal(SIGPIPE, SIG_DFL);
			execl("/bin/sh", "sh", "-c", cmd, (char *)NULL);
			_exit(127);
		}
		int st = 0, rc = 127;
		if (pid > 0) {
			while (waitpid(pid, &st, 0) < 0 && errno == EINTR)
				;
			rc = WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
		}
		/* reap finished background jobs that were re-parented to us */
		while (waitpid(-1, NULL, WNOHANG) > 0)
			;
		char end[160];
		int len = snprintf(end, sizeof(end), "\n@@END %s %d\n", id, rc);
		for (int off = 0; off < len;) {
			ssize_t w = write(fd, end + off, len - off);
			if (w < 0 && errno == EINTR)
				continue;
			if (w <= 0)
				break;
			off += w;
		}
	}
}

/* ------------------------------------------------------------------ main */
int main(int argc, char **argv)
{
	setvbuf(stdout, NULL, _IOLBF, 0);
	signal(SIGPIPE, SIG_IGN);
	if (argc < 2)
		goto usage;
	const char *c = argv[1];
	if (!strcmp(c, "sockaddr"))
		return cmd_sockaddr(argc, argv);
	if (!strcmp(c, "gid") && argc == 3) {
		printf("0x%08x\n", global_id(argv[2]));
		return 0;
	}
	if (!strcmp(c, "join"))
		return cmd_join(argc, argv);
	if (!strcmp(c, "create"))
		return cmd_create(argc, argv);
	if (!strcmp(c, "remove"))
		return cmd_remove(argc, argv);
	if (!strcmp(c, "leave") || !strcmp(c, "release"))
		return cmd_leave(argc, argv);
	if (!strcmp(c, "stop"))
		return cmd_stop(argc, argv);
	if (!strcmp(c, "members"))
		return cmd_members(argc, argv);
	if (!strcmp(c, "agent"))
		return cmd_agent(argc, argv);
	if (!strcmp(c, "bench"))
		return cmd_bench(argc, argv);
	if (!strcmp(c, "waitlog"))
		return cmd_waitlog(argc, argv);
	if (!strcmp(c, "sockkill"))
		return cmd_sockkill(argc, argv);
	if (!strcmp(c, "serve"))
		return cmd_serve(argc, argv);
usage:
	fprintf(stderr, "usage: dlmlc sockaddr|gid|join|create|remove|leave|stop|members|agent|bench|waitlog|sockkill|serve ...\n"
			"(see the comment at the top of Interop/vm/dlmlc.c)\n");
	return 2;
}
