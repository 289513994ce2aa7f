/*
 * georm's native addon: the few Linux system calls Node does not expose.
 *
 *   seekData / seekHole     lseek(SEEK_DATA / SEEK_HOLE)          BLOCK_STATUS
 *   punchHoleAsync /        fallocate(PUNCH_HOLE|KEEP_SIZE /       TRIM, WRITE_ZEROES
 *     zeroRangeAsync          ZERO_RANGE|KEEP_SIZE) on a pool thread
 *   blockDeviceSize         ioctl(BLKGETSIZE64)                   block-device volumes
 *   sdNotify                sendto() on a unix datagram socket    systemd Type=notify
 *   socketpair              socketpair(AF_UNIX, SOCK_STREAM)      /dev/nbdN attach
 *   nbdAttach / nbdDetach   NBD_SET_SOCK … NBD_DO_IT / NBD_DISCONNECT + NBD_CLEAR_SOCK
 *   udp* / macKey           GeoMessage datagram batches (udp.c)
 *
 * Written on node_api.h only (ABI-stable across Node 20/22/24). Every failure throws (or, for the
 * calls that finish on another thread, passes to their callback) an Error whose `code` is the errno
 * name, `errno` the positive errno number, plus `syscall` and (where there is one) `path`. The
 * TypeScript wrapper src/native/index.ts is the only importer.
 */
#include "common.h"

#include <errno.h>
#include <fcntl.h>
#include <linux/fs.h>
#include <linux/nbd.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#ifndef FALLOC_FL_KEEP_SIZE
#define FALLOC_FL_KEEP_SIZE 0x01
#endif
#ifndef FALLOC_FL_PUNCH_HOLE
#define FALLOC_FL_PUNCH_HOLE 0x02
#endif
#ifndef FALLOC_FL_ZERO_RANGE
#define FALLOC_FL_ZERO_RANGE 0x10
#endif

/* ---- errors --------------------------------------------------------------------------------- */

static const char *errno_name(int err) {
  const char *n = strerrorname_np(err);
  return n ? n : "EUNKNOWN";
}

/* A hint appended to the message for failures whose cause is usually the machine, not georm. */
static const char *nbd_hint(const char *syscall, int err) {
  if (strcmp(syscall, "open") == 0 && (err == ENOENT || err == ENXIO || err == ENODEV))
    return " (no NBD device: load the kernel module with `modprobe nbd` (e.g. `modprobe nbd nbds_max=16`))";
  if (strcmp(syscall, "ioctl") == 0 && (err == ENOTTY || err == EINVAL))
    return " (not an NBD device, or the nbd module does not support this request)";
  if (err == EBUSY) return " (the NBD device is already in use: detach it first, e.g. `nbd-client -d DEVICE`)";
  if (err == EACCES || err == EPERM) return " (attaching /dev/nbdN needs root or CAP_SYS_ADMIN)";
  return "";
}

napi_value make_errno_error(napi_env env, int err, const char *syscall, const char *path, const char *hint) {
  char msg[512];
  if (path)
    snprintf(msg, sizeof msg, "%s %s: %s%s", syscall, path, strerror(err), hint ? hint : "");
  else
    snprintf(msg, sizeof msg, "%s: %s%s", syscall, strerror(err), hint ? hint : "");
  napi_value jmsg, jcode, error, v;
  napi_create_string_utf8(env, msg, NAPI_AUTO_LENGTH, &jmsg);
  napi_create_string_utf8(env, errno_name(err), NAPI_AUTO_LENGTH, &jcode);
  napi_create_error(env, jcode, jmsg, &error);
  napi_set_named_property(env, error, "code", jcode);
  napi_create_int32(env, err, &v);
  napi_set_named_property(env, error, "errno", v);
  napi_create_string_utf8(env, syscall, NAPI_AUTO_LENGTH, &v);
  napi_set_named_property(env, error, "syscall", v);
  if (path) {
    napi_create_string_utf8(env, path, NAPI_AUTO_LENGTH, &v);
    napi_set_named_property(env, error, "path", v);
  }
  return error;
}

napi_value throw_errno(napi_env env, int err, const char *syscall, const char *path, const char *hint) {
  napi_throw(env, make_errno_error(env, err, syscall, path, hint));
  return NULL;
}

/* ---- argument helpers ----------------------------------------------------------------------- */

int arg_int(napi_env env, napi_value v, const char *what, int32_t *out) {
  if (napi_get_value_int32(env, v, out) != napi_ok) {
    char m[128];
    snprintf(m, sizeof m, "%s must be a number", what);
    napi_throw_type_error(env, "ERR_INVALID_ARG_TYPE", m);
    return 0;
  }
  return 1;
}

/* Offsets and lengths arrive as JS numbers: exact integers up to 2^53, which covers any volume. */
static int arg_off(napi_env env, napi_value v, const char *what, int64_t *out) {
  double d;
  if (napi_get_value_double(env, v, &d) != napi_ok || d < 0 || d > 9007199254740992.0 || d != (double)(int64_t)d) {
    char m[128];
    snprintf(m, sizeof m, "%s must be a non-negative integer", what);
    napi_throw_type_error(env, "ERR_INVALID_ARG_TYPE", m);
    return 0;
  }
  *out = (int64_t)d;
  return 1;
}

int arg_str(napi_env env, napi_value v, const char *what, char *buf, size_t len) {
  size_t got;
  if (napi_get_value_string_utf8(env, v, buf, len, &got) != napi_ok) {
    char m[128];
    snprintf(m, sizeof m, "%s must be a string", what);
    napi_throw_type_error(env, "ERR_INVALID_ARG_TYPE", m);
    return 0;
  }
  if (got >= len - 1) {
    napi_throw_range_error(env, "ERR_OUT_OF_RANGE", "string argument too long");
    return 0;
  }
  return 1;
}

static napi_value num(napi_env env, double d) {
  napi_value v;
  napi_create_double(env, d, &v);
  return v;
}

/* ---- seek / fallocate / size ---------------------------------------------------------------- */

/* lseek(SEEK_DATA|SEEK_HOLE); ENXIO (offset at or past the last data / end of file) returns -1. */
static napi_value do_seek(napi_env env, napi_callback_info info, int whence) {
  size_t argc = 2;
  napi_value argv[2];
  CHECK(napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
  int32_t fd;
  int64_t off;
  if (argc < 2 || !arg_int(env, argv[0], "fd", &fd) || !arg_off(env, argv[1], "offset", &off)) return NULL;
  off_t r = lseek(fd, (off_t)off, whence);
  if (r < 0) {
    if (errno == ENXIO) return num(env, -1);
    return throw_errno(env, errno, "lseek", NULL, NULL);
  }
  return num(env, (double)r);
}
static napi_value SeekData(napi_env env, napi_callback_info info) { return do_seek(env, info, SEEK_DATA); }
static napi_value SeekHole(napi_env env, napi_callback_info info) { return do_seek(env, info, SEEK_HOLE); }

/*
 * Work on a libuv pool thread that ends by calling a JS function once (fallocate, NBD detach).
 * pool_work_queue takes a reference to `cb` and queues the work; false (with a JS exception
 * pending) when `cb` is not a function or the work cannot be queued, and then nothing is left
 * allocated but `data`, which the caller frees. pool_work_done, from the complete callback, calls
 * `cb` with `arg` (an Error, or NULL for undefined) and releases the reference and the work.
 */
static bool pool_work_queue(napi_env env, napi_value cb, const char *name, napi_async_execute_callback exec,
                            napi_async_complete_callback complete, void *data, napi_async_work *work, napi_ref *ref) {
  napi_valuetype t = napi_undefined;
  if (cb) napi_typeof(env, cb, &t);
  if (t != napi_function) {
    napi_throw_type_error(env, "ERR_INVALID_ARG_TYPE", "callback must be a function");
    return false;
  }
  napi_value n;
  napi_create_string_utf8(env, name, NAPI_AUTO_LENGTH, &n);
  if (napi_create_reference(env, cb, 1, ref) != napi_ok) goto fail;
  if (napi_create_async_work(env, NULL, n, exec, complete, data, work) != napi_ok) goto fail_ref;
  if (napi_queue_async_work(env, *work) != napi_ok) goto fail_work;
  return true;
fail_work:
  napi_delete_async_work(env, *work);
fail_ref:
  napi_delete_reference(env, *ref);
fail:
  napi_throw_error(env, "EINTERNAL", "georm_native: cannot queue work on the thread pool");
  return false;
}

static void pool_work_done(napi_env env, napi_ref ref, napi_async_work work, napi_value arg) {
  napi_value cb, undef;
  napi_get_reference_value(env, ref, &cb);
  napi_get_undefined(env, &undef);
  if (!arg) arg = undef;
  napi_call_function(env, undef, cb, 1, &arg, NULL);
  napi_delete_reference(env, ref);
  napi_delete_async_work(env, work);
}

/* fallocate(2) over [off, off+len), retried on EINTR; 0 or the errno. A zero length is a no-op
 * (fallocate itself would say EINVAL), as a zero-length TRIM or WRITE_ZEROES is. */
static int falloc_range(int fd, int mode, int64_t off, int64_t len) {
  if (len == 0) return 0;
  int r;
  do r = fallocate(fd, mode, (off_t)off, (off_t)len);
  while (r < 0 && errno == EINTR);
  return r < 0 ? errno : 0;
}

/*
 * punchHoleAsync / zeroRangeAsync(fd, offset, length, done(err?)): the same fallocate on a libuv pool
 * thread. A discard or zero-range of gigabytes on a block device can take seconds, and on the event
 * loop that would stop GeoMessage acks and keepalives, NBD replies and control queries meanwhile
 * (long enough for the peer to declare a failure). The arguments are read and checked here, on the
 * JS thread (offsets and lengths as arg_off takes them: non-negative exact integers), so a bad one
 * throws at once, and the pool thread only sees the numbers captured at the call. The caller keeps
 * the fd open until `done`, or its number could name another file by then (FileBackend.close waits).
 */
typedef struct {
  napi_async_work work;
  napi_ref cb;
  int fd;
  int mode;
  int64_t off, len;
  int err;
} falloc_work_t;

static void falloc_exec(napi_env env, void *data) {
  (void)env;
  falloc_work_t *w = data;
  w->err = falloc_range(w->fd, w->mode, w->off, w->len);
}

static void falloc_complete(napi_env env, napi_status status, void *data) {
  falloc_work_t *w = data;
  /* napi_cancelled: the work never ran (nothing cancels it today; `done` is still called once). */
  int err = status == napi_cancelled ? ECANCELED : w->err;
  pool_work_done(env, w->cb, w->work, err ? make_errno_error(env, err, "fallocate", NULL, NULL) : NULL);
  free(w);
}

static napi_value do_fallocate_async(napi_env env, napi_callback_info info, int mode) {
  size_t argc = 4;
  napi_value argv[4];
  CHECK(napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
  int32_t fd;
  int64_t off, len;
  if (argc < 3 || !arg_int(env, argv[0], "fd", &fd) || !arg_off(env, argv[1], "offset", &off) ||
      !arg_off(env, argv[2], "length", &len))
    return NULL;
  falloc_work_t *w = calloc(1, sizeof *w);
  if (!w) return throw_errno(env, ENOMEM, "calloc", NULL, NULL);
  w->fd = fd;
  w->mode = mode;
  w->off = off;
  w->len = len;
  if (!pool_work_queue(env, argc >= 4 ? argv[3] : NULL, "georm:fallocate", falloc_exec, falloc_complete, w, &w->work, &w->cb))
    free(w);
  return NULL;
}
static napi_value PunchHoleAsync(napi_env env, napi_callback_info info) {
  return do_fallocate_async(env, info, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE);
}
static napi_value ZeroRangeAsync(napi_env env, napi_callback_info info) {
  return do_fallocate_async(env, info, FALLOC_FL_ZERO_RANGE | FALLOC_FL_KEEP_SIZE);
}

/*
 * pread/pwrite(fd, buf, bufOffset, length, position) → bytes moved: one system call, as fs.readSync
 * and fs.writeSync make, without their layers (argument validation in JS, a request object, a
 * trace-category check per call); about 0.3 µs less per 4 KiB write, on every write of both sides.
 */
static napi_value do_rw(napi_env env, napi_callback_info info, int write) {
  size_t argc = 5;
  napi_value argv[5];
  CHECK(napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
  int32_t fd;
  int64_t boff, len, pos;
  void *data;
  size_t blen;
  if (argc < 5 || !arg_int(env, argv[0], "fd", &fd)) return NULL;
  if (napi_get_buffer_info(env, argv[1], &data, &blen) != napi_ok) {
    napi_throw_type_error(env, "ERR_INVALID_ARG_TYPE", "buffer must be a Buffer");
    return NULL;
  }
  if (!arg_off(env, argv[2], "offset", &boff) || !arg_off(env, argv[3], "length", &len) || !arg_off(env, argv[4], "position", &pos)) return NULL;
  if (boff > (int64_t)blen || len > (int64_t)blen - boff) {
    napi_throw_range_error(env, "ERR_OUT_OF_RANGE", "offset and length must lie inside the buffer");
    return NULL;
  }
  ssize_t r;
  do r = write ? pwrite(fd, (char *)data + boff, (size_t)len, (off_t)pos) : pread(fd, (char *)data + boff, (size_t)len, (off_t)pos);
  while (r < 0 && errno == EINTR);
  if (r < 0) return throw_errno(env, errno, write ? "write" : "read", NULL, NULL);
  return num(env, (double)r);
}
static napi_value Pread(napi_env env, napi_callback_info info) { return do_rw(env, info, 0); }
static napi_value Pwrite(napi_env env, napi_callback_info info) { return do_rw(env, info, 1); }

static napi_value BlockDeviceSize(napi_env env, napi_callback_info info) {
  size_t argc = 1;
  napi_value argv[1];
  CHECK(napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
  int32_t fd;
  if (argc < 1 || !arg_int(env, argv[0], "fd", &fd)) return NULL;
  uint64_t size = 0;
  if (ioctl(fd, BLKGETSIZE64, &size) < 0) return throw_errno(env, errno, "ioctl", NULL, " (BLKGETSIZE64: not a block device?)");
  return num(env, (double)size);
}

/* ---- sd_notify -------------------------------------------------------------------------------- */

/* Sends `state` to $NOTIFY_SOCKET (a path, or '@name' for the abstract namespace). Returns false when
 * the variable is unset: not running under systemd (or under a unit that is not Type=notify). */
static napi_value SdNotify(napi_env env, napi_callback_info info) {
  size_t argc = 1;
  napi_value argv[1];
  CHECK(napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
  char state[4096];
  if (argc < 1 || !arg_str(env, argv[0], "state", state, sizeof state)) return NULL;
  napi_value result;
  const char *path = getenv("NOTIFY_SOCKET");
  if (!path || !*path) {
    napi_get_boolean(env, false, &result);
    return result;
  }
  struct sockaddr_un sa;
  memset(&sa, 0, sizeof sa);
  sa.sun_family = AF_UNIX;
  size_t plen = strlen(path);
  if ((path[0] != '/' && path[0] != '@') || plen >= sizeof sa.sun_path)
    return throw_errno(env, EINVAL, "connect", path, " (NOTIFY_SOCKET must be an absolute path or @abstract)");
  memcpy(sa.sun_path, path, plen);
  if (path[0] == '@') sa.sun_path[0] = 0;
  socklen_t salen = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + plen + (path[0] == '@' ? 0 : 1));
  int fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return throw_errno(env, errno, "socket", NULL, NULL);
  ssize_t n = sendto(fd, state, strlen(state), MSG_NOSIGNAL, (struct sockaddr *)&sa, salen);
  int err = errno;
  close(fd);
  if (n < 0) return throw_errno(env, err, "sendto", path, NULL);
  napi_get_boolean(env, true, &result);
  return result;
}

/* ---- socketpair ------------------------------------------------------------------------------- */

static napi_value SocketPair(napi_env env, napi_callback_info info) {
  (void)info;
  int sv[2];
  if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) < 0) return throw_errno(env, errno, "socketpair", NULL, NULL);
  napi_value arr, a, b;
  CHECK(napi_create_array_with_length(env, 2, &arr));
  napi_create_int32(env, sv[0], &a);
  napi_create_int32(env, sv[1], &b);
  napi_set_element(env, arr, 0, a);
  napi_set_element(env, arr, 1, b);
  return arr;
}

/* ---- NBD attach ------------------------------------------------------------------------------- */

/*
 * NBD_DO_IT blocks for the whole life of the device, so it runs on a thread of its own rather than
 * on a libuv pool thread (a pool thread held for hours would starve fs I/O, which the backend needs).
 * Its end is reported back to JS through a thread-safe function.
 */
typedef struct {
  int devfd;
  int err; /* errno of NBD_DO_IT, 0 when it returned after a requested disconnect */
  char device[256];
  pthread_t thread;
  napi_threadsafe_function tsfn;
} attach_t;

static void *do_it_thread(void *arg) {
  attach_t *a = arg;
  int r = ioctl(a->devfd, NBD_DO_IT);
  a->err = r < 0 ? errno : 0;
  /* The kernel has shut the socket down; drop what is left so the device can be reused. */
  ioctl(a->devfd, NBD_CLEAR_QUE);
  ioctl(a->devfd, NBD_CLEAR_SOCK);
  close(a->devfd);
  a->devfd = -1;
  napi_call_threadsafe_function(a->tsfn, a, napi_tsfn_blocking);
  napi_release_threadsafe_function(a->tsfn, napi_tsfn_release);
  return NULL;
}

static void attach_done_js(napi_env env, napi_value cb, void *context, void *data) {
  (void)context;
  attach_t *a = data;
  if (env && cb) {
    napi_value undef, arg;
    napi_get_undefined(env, &undef);
    if (a->err) arg = make_errno_error(env, a->err, "ioctl", a->device, " (NBD_DO_IT ended: connection lost or timed out)");
    else arg = undef;
    napi_call_function(env, undef, cb, 1, &arg, NULL);
  }
  pthread_join(a->thread, NULL);
  free(a);
}

static int get_opt(napi_env env, napi_value obj, const char *name, int64_t *out, int required) {
  bool has = false;
  napi_has_named_property(env, obj, name, &has);
  if (!has) {
    if (!required) return 1;
    char m[128];
    snprintf(m, sizeof m, "option %s is required", name);
    napi_throw_type_error(env, "ERR_INVALID_ARG_TYPE", m);
    return 0;
  }
  napi_value v;
  napi_get_named_property(env, obj, name, &v);
  return arg_off(env, v, name, out);
}

/*
 * nbdAttach(device, socketFd, {size, blockSize, flags, timeoutSec}, onEnd(err?)):
 * configures the device synchronously (so configuration errors throw here), then starts NBD_DO_IT.
 * The socket fd is handed to the kernel, which keeps its own reference; it is closed here in every
 * case, so the caller must not use or close it again.
 */
static napi_value NbdAttach(napi_env env, napi_callback_info info) {
  size_t argc = 4;
  napi_value argv[4];
  CHECK(napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
  char device[256];
  int32_t sock;
  int64_t size = 0, bs = 4096, flags = 0, timeout = 0;
  napi_valuetype t;
  if (argc < 4 || !arg_str(env, argv[0], "device", device, sizeof device) || !arg_int(env, argv[1], "socketFd", &sock))
    return NULL;
  napi_typeof(env, argv[2], &t);
  if (t != napi_object) {
    napi_throw_type_error(env, "ERR_INVALID_ARG_TYPE", "options must be an object");
    return NULL;
  }
  if (!get_opt(env, argv[2], "size", &size, 1) || !get_opt(env, argv[2], "blockSize", &bs, 0) ||
      !get_opt(env, argv[2], "flags", &flags, 0) || !get_opt(env, argv[2], "timeoutSec", &timeout, 0))
    return NULL;
  napi_typeof(env, argv[3], &t);
  if (t != napi_function) {
    napi_throw_type_error(env, "ERR_INVALID_ARG_TYPE", "callback must be a function");
    return NULL;
  }
  if (bs < 512 || bs > 65536 || (bs & (bs - 1))) {
    close(sock);
    napi_throw_range_error(env, "ERR_OUT_OF_RANGE", "blockSize must be a power of two from 512 to 65536");
    return NULL;
  }
  if (size < bs) {
    close(sock);
    napi_throw_range_error(env, "ERR_OUT_OF_RANGE", "size must be at least one block");
    return NULL;
  }

  int devfd = open(device, O_RDWR | O_CLOEXEC);
  if (devfd < 0) {
    int err = errno;
    close(sock);
    return throw_errno(env, err, "open", device, nbd_hint("open", err));
  }
  /* Order matters: the block size first, then the size in blocks of that size. A size that is not a
   * multiple of the block size is rounded down (the kernel cannot address a partial block). */
  struct { unsigned long req; unsigned long arg; const char *name; } steps[] = {
    { NBD_SET_SOCK, (unsigned long)sock, "NBD_SET_SOCK" },
    { NBD_SET_BLKSIZE, (unsigned long)bs, "NBD_SET_BLKSIZE" },
    { NBD_SET_SIZE_BLOCKS, (unsigned long)(size / bs), "NBD_SET_SIZE_BLOCKS" },
    { NBD_SET_FLAGS, (unsigned long)flags, "NBD_SET_FLAGS" },
    { NBD_SET_TIMEOUT, (unsigned long)timeout, "NBD_SET_TIMEOUT" },
  };
  for (size_t i = 0; i < sizeof steps / sizeof steps[0]; i++) {
    if (ioctl(devfd, steps[i].req, steps[i].arg) < 0) {
      int err = errno;
      char hint[200];
      snprintf(hint, sizeof hint, " (%s)%s", steps[i].name, nbd_hint("ioctl", err));
      if (i > 0) ioctl(devfd, NBD_CLEAR_SOCK);
      close(devfd);
      close(sock);
      return throw_errno(env, err, "ioctl", device, hint);
    }
  }
  close(sock); /* the kernel holds its own reference now */

  attach_t *a = calloc(1, sizeof *a);
  if (!a) {
    ioctl(devfd, NBD_CLEAR_SOCK);
    close(devfd);
    return throw_errno(env, ENOMEM, "calloc", NULL, NULL);
  }
  a->devfd = devfd;
  snprintf(a->device, sizeof a->device, "%s", device);
  napi_value name;
  napi_create_string_utf8(env, "georm:nbd-do-it", NAPI_AUTO_LENGTH, &name);
  if (napi_create_threadsafe_function(env, argv[3], NULL, name, 0, 1, NULL, NULL, NULL, attach_done_js, &a->tsfn) != napi_ok) {
    ioctl(devfd, NBD_CLEAR_SOCK);
    close(devfd);
    free(a);
    napi_throw_error(env, "EINTERNAL", "georm_native: cannot create thread-safe function");
    return NULL;
  }
  int perr = pthread_create(&a->thread, NULL, do_it_thread, a);
  if (perr) {
    ioctl(devfd, NBD_CLEAR_SOCK);
    close(devfd);
    napi_release_threadsafe_function(a->tsfn, napi_tsfn_abort);
    free(a);
    return throw_errno(env, perr, "pthread_create", NULL, NULL);
  }
  return NULL;
}

/* ---- NBD detach ------------------------------------------------------------------------------- */

/*
 * nbdDetach(device, onDone(err?)): fsync the device (pushes cached writes and a FLUSH through the
 * server), then NBD_DISCONNECT (the server receives NBD_CMD_DISC) and NBD_CLEAR_SOCK. Runs on a pool
 * thread: when the server lives in this same process, doing this on the JS thread would deadlock,
 * because the flush needs the event loop to answer.
 */
typedef struct {
  napi_async_work work;
  napi_ref cb;
  char device[256];
  int err;
  const char *syscall;
  const char *what;
} detach_t;

static void detach_exec(napi_env env, void *data) {
  (void)env;
  detach_t *d = data;
  int fd = open(d->device, O_RDWR | O_CLOEXEC);
  if (fd < 0) {
    d->err = errno;
    d->syscall = "open";
    return;
  }
  if (fsync(fd) < 0 && errno != EIO && errno != EINVAL) {
    /* EIO/EINVAL: the connection is already gone; disconnecting is still the right thing. */
    d->err = errno;
    d->syscall = "fsync";
  }
  if (ioctl(fd, NBD_DISCONNECT) < 0 && !d->err) {
    d->err = errno;
    d->syscall = "ioctl";
    d->what = " (NBD_DISCONNECT)";
  }
  if (ioctl(fd, NBD_CLEAR_SOCK) < 0 && !d->err) {
    d->err = errno;
    d->syscall = "ioctl";
    d->what = " (NBD_CLEAR_SOCK)";
  }
  close(fd);
}

static void detach_complete(napi_env env, napi_status status, void *data) {
  (void)status;
  detach_t *d = data;
  napi_value arg = NULL;
  if (d->err) {
    char hint[256];
    snprintf(hint, sizeof hint, "%s%s", d->what ? d->what : "", nbd_hint(d->syscall, d->err));
    arg = make_errno_error(env, d->err, d->syscall, d->device, hint);
  }
  pool_work_done(env, d->cb, d->work, arg);
  free(d);
}

static napi_value NbdDetach(napi_env env, napi_callback_info info) {
  size_t argc = 2;
  napi_value argv[2];
  CHECK(napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
  detach_t *d = calloc(1, sizeof *d);
  if (!d) return throw_errno(env, ENOMEM, "calloc", NULL, NULL);
  if (argc < 2 || !arg_str(env, argv[0], "device", d->device, sizeof d->device) ||
      !pool_work_queue(env, argv[1], "georm:nbd-detach", detach_exec, detach_complete, d, &d->work, &d->cb))
    free(d);
  return NULL;
}

/* ---- module --------------------------------------------------------------------------------- */

static napi_value Init(napi_env env, napi_value exports) {
  napi_property_descriptor props[] = {
    EXPORT_FN("seekData", SeekData),
    EXPORT_FN("seekHole", SeekHole),
    EXPORT_FN("punchHoleAsync", PunchHoleAsync),
    EXPORT_FN("zeroRangeAsync", ZeroRangeAsync),
    EXPORT_FN("blockDeviceSize", BlockDeviceSize),
    EXPORT_FN("pread", Pread),
    EXPORT_FN("pwrite", Pwrite),
    EXPORT_FN("sdNotify", SdNotify),
    EXPORT_FN("socketpair", SocketPair),
    EXPORT_FN("nbdAttach", NbdAttach),
    EXPORT_FN("nbdDetach", NbdDetach),
  };
  napi_define_properties(env, exports, sizeof props / sizeof props[0], props);
  georm_udp_define(env, exports);
  return exports;
}

NAPI_MODULE(NODE_GYP_MODULE_NAME, Init)
