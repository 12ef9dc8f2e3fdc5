/*
 * faultfs: an LD_PRELOAD shim that makes writes and syncs on chosen files fail, for Mailroom's write-failure
 * tests (tests/tests/write_failure.rs builds it with `cc -shared` into target/faultfs/ and starts the broker
 * with it). Nothing here is used outside the tests.
 *
 * Environment (read once, at load):
 *   FAULTFS_ROOT     the data directory; only files below it are ever failed
 *   FAULTFS_CONTROL  the control file (re-read whenever it changes: the test replaces it with rename)
 *   FAULTFS_LOG      every injected failure appends one line here: "<errno> <call> <path relative to root>"
 *
 * Control file: one line "<errno> <ops> <count> <drop> <regex>"
 *   errno   ENOSPC, EIO, or off (then the rest may be missing)
 *   ops     write, sync or write,sync: which calls fail. write = write, pwrite(64), writev, pwritev(64)(v2),
 *           fallocate; sync = fsync, fdatasync, sync_file_range
 *   count   -1: every matching call until the control file changes; N > 0: the next N matching calls;
 *           1/N: each matching call with probability 1/N (until the control file changes)
 *   drop    1: an injected sync failure also punches holes (zeros) into the ranges written to that file since
 *           its last successful sync: after a failed fsync Linux may drop the dirty pages and report success
 *           on the next fsync ("fsyncgate"), so data a later successful sync seems to cover can be gone.
 *           0: the data stays (the failure is only reported)
 *   regex   POSIX extended regex matched against the path relative to FAULTFS_ROOT (e.g. \.seg$)
 *
 * Every write to a regular file is tracked (inode, offset, length) while drop could be asked for, so that a
 * failed sync knows what it would have covered. Calls made by the shim itself go to libc directly.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <regex.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/types.h>
#include <sys/uio.h>
#include <unistd.h>

#define OP_WRITE 1
#define OP_SYNC 2

static ssize_t (*real_write)(int, const void *, size_t);
static ssize_t (*real_pwrite)(int, const void *, size_t, off_t);
static ssize_t (*real_pwrite64)(int, const void *, size_t, off64_t);
static ssize_t (*real_writev)(int, const struct iovec *, int);
static ssize_t (*real_pwritev)(int, const struct iovec *, int, off_t);
static ssize_t (*real_pwritev64)(int, const struct iovec *, int, off64_t);
static ssize_t (*real_pwritev2)(int, const struct iovec *, int, off_t, int);
static ssize_t (*real_pwritev64v2)(int, const struct iovec *, int, off64_t, int);
static int (*real_fsync)(int);
static int (*real_fdatasync)(int);
static int (*real_sync_file_range)(int, off64_t, off64_t, unsigned int);
static int (*real_fallocate)(int, int, off_t, off_t);
static int (*real_fallocate64)(int, int, off64_t, off64_t);

static char root[PATH_MAX];
static size_t root_len;
static char control[PATH_MAX];
static char logpath[PATH_MAX];

/* The current fault, swapped under `lock` when the control file changes. */
static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static struct {
    ino_t ino;
    struct timespec mtime;
    off_t size;
    int loaded;
} ctl_seen;
static int fault_errno;  /* 0: off */
static int fault_ops;
static long fault_count; /* -1: unlimited */
static long fault_one_in; /* > 0: each matching call fails with probability 1/fault_one_in */
static unsigned long long rng_state = 0x9E3779B97F4A7C15ULL;
static int fault_drop;
static regex_t fault_re;
static int fault_re_ok;

/* Unsynced ranges per inode (for drop). */
#define MAX_FILES 512
#define MAX_RANGES 256
struct range {
    off_t start, end;
};
struct tracked {
    dev_t dev;
    ino_t ino;
    int used;
    int n;
    struct range r[MAX_RANGES];
};
static struct tracked files[MAX_FILES];
static pthread_mutex_t track_lock = PTHREAD_MUTEX_INITIALIZER;

#define RESOLVE(name) real_##name = dlsym(RTLD_NEXT, #name)

static volatile int inited;

__attribute__((constructor)) static void faultfs_init(void) {
    if (inited) return;
    RESOLVE(write);
    RESOLVE(pwrite);
    RESOLVE(pwrite64);
    RESOLVE(writev);
    RESOLVE(pwritev);
    RESOLVE(pwritev64);
    RESOLVE(pwritev2);
    RESOLVE(pwritev64v2);
    RESOLVE(fsync);
    RESOLVE(fdatasync);
    RESOLVE(sync_file_range);
    RESOLVE(fallocate);
    RESOLVE(fallocate64);
    const char *r = getenv("FAULTFS_ROOT");
    const char *c = getenv("FAULTFS_CONTROL");
    const char *l = getenv("FAULTFS_LOG");
    if (r) {
        snprintf(root, sizeof root, "%s", r);
        root_len = strlen(root);
        while (root_len > 1 && root[root_len - 1] == '/') root[--root_len] = 0;
    }
    if (c) snprintf(control, sizeof control, "%s", c);
    if (l) snprintf(logpath, sizeof logpath, "%s", l);
    inited = 1;
}

/* Each wrapper: resolve first if called before the constructor ran; a call libc lacks fails with ENOSYS. */
#define ENTER(name)                 \
    do {                            \
        if (!inited) faultfs_init(); \
        if (!real_##name) {         \
            errno = ENOSYS;         \
            return -1;              \
        }                           \
    } while (0)

static void log_line(const char *s) {
    if (!logpath[0]) return;
    int fd = open(logpath, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
    if (fd < 0) return;
    (void)syscall(SYS_write, fd, s, strlen(s));
    close(fd);
}

/* Re-reads the control file if it changed. Called with `lock` held. */
static void reload_locked(void) {
    struct stat st;
    if (!control[0] || stat(control, &st) != 0) {
        fault_errno = 0;
        ctl_seen.loaded = 0;
        return;
    }
    if (ctl_seen.loaded && st.st_ino == ctl_seen.ino && st.st_size == ctl_seen.size &&
        st.st_mtim.tv_sec == ctl_seen.mtime.tv_sec && st.st_mtim.tv_nsec == ctl_seen.mtime.tv_nsec)
        return;
    ctl_seen.ino = st.st_ino;
    ctl_seen.size = st.st_size;
    ctl_seen.mtime = st.st_mtim;
    ctl_seen.loaded = 1;
    char buf[1024] = {0};
    int fd = open(control, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        fault_errno = 0;
        return;
    }
    ssize_t n = read(fd, buf, sizeof buf - 1);
    close(fd);
    if (n < 0) n = 0;
    buf[n] = 0;
    char *nl = strchr(buf, '\n');
    if (nl) *nl = 0;
    char err[32] = {0}, ops[64] = {0}, cnt[32] = {0};
    long count = -1;
    int drop = 0, off = 0;
    fault_errno = 0;
    if (fault_re_ok) {
        regfree(&fault_re);
        fault_re_ok = 0;
    }
    if (sscanf(buf, "%31s %63s %31s %d %n", err, ops, cnt, &drop, &off) < 4) return;
    fault_one_in = 0;
    if (!strncmp(cnt, "1/", 2)) {
        fault_one_in = atol(cnt + 2);
        count = -1;
    } else {
        count = atol(cnt);
    }
    if (!strcmp(err, "ENOSPC"))
        fault_errno = ENOSPC;
    else if (!strcmp(err, "EIO"))
        fault_errno = EIO;
    else
        return;
    fault_ops = (strstr(ops, "write") ? OP_WRITE : 0) | (strstr(ops, "sync") ? OP_SYNC : 0);
    fault_count = count;
    fault_drop = drop;
    fault_re_ok = regcomp(&fault_re, buf + off, REG_EXTENDED | REG_NOSUB) == 0;
    if (!fault_re_ok) fault_errno = 0;
}

/* The path of `fd` relative to the root, or NULL if it is not below it. */
static const char *rel_path(int fd, char *buf, size_t len) {
    if (!root_len) return NULL;
    char link[64];
    snprintf(link, sizeof link, "/proc/self/fd/%d", fd);
    ssize_t n = readlink(link, buf, len - 1);
    if (n <= 0) return NULL;
    buf[n] = 0;
    /* An unlinked file's link reads "<path> (deleted)": match its name as it was. */
    const char *del = " (deleted)";
    size_t dl = strlen(del);
    if ((size_t)n > dl && !strcmp(buf + n - dl, del)) buf[n - dl] = 0;
    if (strncmp(buf, root, root_len) != 0 || (buf[root_len] != '/' && buf[root_len] != 0)) return NULL;
    return buf[root_len] == '/' ? buf + root_len + 1 : buf + root_len;
}

static struct tracked *find_tracked(dev_t dev, ino_t ino, int create) {
    struct tracked *free_slot = NULL;
    for (int i = 0; i < MAX_FILES; i++) {
        if (files[i].used && files[i].dev == dev && files[i].ino == ino) return &files[i];
        if (!files[i].used && !free_slot) free_slot = &files[i];
    }
    if (!create || !free_slot) return NULL;
    free_slot->used = 1;
    free_slot->dev = dev;
    free_slot->ino = ino;
    free_slot->n = 0;
    return free_slot;
}

/* Records that [off, off+len) of fd's file was written and not yet synced. */
static void track_write(int fd, off_t off, size_t len) {
    if (!len || off < 0) return;
    struct stat st;
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) return;
    pthread_mutex_lock(&track_lock);
    struct tracked *t = find_tracked(st.st_dev, st.st_ino, 1);
    if (t) {
        off_t s = off, e = off + (off_t)len;
        int merged = 0;
        for (int i = 0; i < t->n; i++) {
            if (s <= t->r[i].end && e >= t->r[i].start) {
                if (s < t->r[i].start) t->r[i].start = s;
                if (e > t->r[i].end) t->r[i].end = e;
                merged = 1;
                break;
            }
        }
        if (!merged) {
            if (t->n < MAX_RANGES) {
                t->r[t->n].start = s;
                t->r[t->n].end = e;
                t->n++;
            } else {
                /* Too many ranges: widen the last one (over-approximates what is unsynced). */
                if (s < t->r[t->n - 1].start) t->r[t->n - 1].start = s;
                if (e > t->r[t->n - 1].end) t->r[t->n - 1].end = e;
            }
        }
    }
    pthread_mutex_unlock(&track_lock);
}

static void synced(int fd) {
    struct stat st;
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) return;
    pthread_mutex_lock(&track_lock);
    struct tracked *t = find_tracked(st.st_dev, st.st_ino, 0);
    if (t) t->used = 0;
    pthread_mutex_unlock(&track_lock);
}

/* Zeroes what was written to fd's file since its last successful sync; returns the bytes dropped. */
static long long drop_unsynced(int fd) {
    struct stat st;
    long long dropped = 0;
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) return 0;
    pthread_mutex_lock(&track_lock);
    struct tracked *t = find_tracked(st.st_dev, st.st_ino, 0);
    if (t) {
        for (int i = 0; i < t->n; i++) {
            off_t s = t->r[i].start, e = t->r[i].end;
            if (s >= st.st_size) continue;
            if (e > st.st_size) e = st.st_size;
            if (real_fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, s, e - s) == 0)
                dropped += e - s;
        }
        t->used = 0;
    }
    pthread_mutex_unlock(&track_lock);
    return dropped;
}

/* Whether this call must fail; sets errno and logs if so. */
static int inject(int fd, int op, const char *call) {
    if (!control[0]) return 0;
    char path[PATH_MAX];
    pthread_mutex_lock(&lock);
    reload_locked();
    int active = fault_errno && (fault_ops & op) && fault_count != 0;
    pthread_mutex_unlock(&lock);
    if (!active) return 0;
    const char *rel = rel_path(fd, path, sizeof path);
    if (!rel) return 0;
    pthread_mutex_lock(&lock);
    int hit = fault_errno && (fault_ops & op) && fault_count != 0 && fault_re_ok &&
              regexec(&fault_re, rel, 0, NULL, 0) == 0;
    if (hit && fault_one_in > 1) {
        /* xorshift64*: cheap, and reproducible enough for a test */
        rng_state ^= rng_state >> 12;
        rng_state ^= rng_state << 25;
        rng_state ^= rng_state >> 27;
        hit = ((rng_state * 0x2545F4914F6CDD1DULL) >> 33) % (unsigned long long)fault_one_in == 0;
    }
    int e = fault_errno, drop = fault_drop;
    if (hit && fault_count > 0) fault_count--;
    pthread_mutex_unlock(&lock);
    if (!hit) return 0;
    long long dropped = (op == OP_SYNC && drop) ? drop_unsynced(fd) : 0;
    char line[PATH_MAX + 128];
    snprintf(line, sizeof line, "%s %s %s dropped=%lld\n", e == ENOSPC ? "ENOSPC" : "EIO", call, rel, dropped);
    log_line(line);
    errno = e;
    return 1;
}

static off_t cur_off(int fd) { return lseek(fd, 0, SEEK_CUR); }

ssize_t write(int fd, const void *buf, size_t n) {
    ENTER(write);
    if (inject(fd, OP_WRITE, "write")) return -1;
    off_t off = control[0] ? cur_off(fd) : -1;
    ssize_t r = real_write(fd, buf, n);
    if (r > 0 && off >= 0) track_write(fd, off, (size_t)r);
    return r;
}

ssize_t pwrite(int fd, const void *buf, size_t n, off_t off) {
    ENTER(pwrite);
    if (inject(fd, OP_WRITE, "pwrite")) return -1;
    ssize_t r = real_pwrite(fd, buf, n, off);
    if (r > 0 && control[0]) track_write(fd, off, (size_t)r);
    return r;
}

ssize_t pwrite64(int fd, const void *buf, size_t n, off64_t off) {
    ENTER(pwrite64);
    if (inject(fd, OP_WRITE, "pwrite64")) return -1;
    ssize_t r = real_pwrite64(fd, buf, n, off);
    if (r > 0 && control[0]) track_write(fd, off, (size_t)r);
    return r;
}

ssize_t writev(int fd, const struct iovec *iov, int cnt) {
    ENTER(writev);
    if (inject(fd, OP_WRITE, "writev")) return -1;
    off_t off = control[0] ? cur_off(fd) : -1;
    ssize_t r = real_writev(fd, iov, cnt);
    if (r > 0 && off >= 0) track_write(fd, off, (size_t)r);
    return r;
}

ssize_t pwritev(int fd, const struct iovec *iov, int cnt, off_t off) {
    ENTER(pwritev);
    if (inject(fd, OP_WRITE, "pwritev")) return -1;
    ssize_t r = real_pwritev(fd, iov, cnt, off);
    if (r > 0 && control[0]) track_write(fd, off, (size_t)r);
    return r;
}

ssize_t pwritev64(int fd, const struct iovec *iov, int cnt, off64_t off) {
    ENTER(pwritev64);
    if (inject(fd, OP_WRITE, "pwritev64")) return -1;
    ssize_t r = real_pwritev64(fd, iov, cnt, off);
    if (r > 0 && control[0]) track_write(fd, off, (size_t)r);
    return r;
}

ssize_t pwritev2(int fd, const struct iovec *iov, int cnt, off_t off, int flags) {
    ENTER(pwritev2);
    if (inject(fd, OP_WRITE, "pwritev2")) return -1;
    off_t at = off == -1 && control[0] ? cur_off(fd) : off;
    ssize_t r = real_pwritev2(fd, iov, cnt, off, flags);
    if (r > 0 && control[0]) track_write(fd, at, (size_t)r);
    return r;
}

ssize_t pwritev64v2(int fd, const struct iovec *iov, int cnt, off64_t off, int flags) {
    ENTER(pwritev64v2);
    if (inject(fd, OP_WRITE, "pwritev64v2")) return -1;
    off_t at = off == -1 && control[0] ? cur_off(fd) : off;
    ssize_t r = real_pwritev64v2(fd, iov, cnt, off, flags);
    if (r > 0 && control[0]) track_write(fd, at, (size_t)r);
    return r;
}

int fallocate(int fd, int mode, off_t off, off_t len) {
    ENTER(fallocate);
    if (inject(fd, OP_WRITE, "fallocate")) return -1;
    return real_fallocate(fd, mode, off, len);
}

int fallocate64(int fd, int mode, off64_t off, off64_t len) {
    ENTER(fallocate64);
    if (inject(fd, OP_WRITE, "fallocate64")) return -1;
    return real_fallocate64(fd, mode, off, len);
}

int fsync(int fd) {
    ENTER(fsync);
    if (inject(fd, OP_SYNC, "fsync")) return -1;
    int r = real_fsync(fd);
    if (r == 0 && control[0]) synced(fd);
    return r;
}

int fdatasync(int fd) {
    ENTER(fdatasync);
    if (inject(fd, OP_SYNC, "fdatasync")) return -1;
    int r = real_fdatasync(fd);
    if (r == 0 && control[0]) synced(fd);
    return r;
}

int sync_file_range(int fd, off64_t off, off64_t n, unsigned int flags) {
    ENTER(sync_file_range);
    if (inject(fd, OP_SYNC, "sync_file_range")) return -1;
    /* Not counted as a sync for drop: it writes no metadata and flushes no disk cache. */
    return real_sync_file_range(fd, off, n, flags);
}
