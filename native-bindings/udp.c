/*
 * GeoMessage's datagram I/O in batches (used through src/native/udp.ts by src/geomessage/native-wire.ts).
 *
 * With Node's dgram every 1.4 KB packet costs a system call, a JS↔C++ crossing, a request object and,
 * on receipt, a Buffer and an event: at MTU 1500 that was most of GeoMessage's CPU. Here one call
 * moves a batch:
 *
 *   udpSend     signs the packets laid out back to back in one buffer (a 16-byte ChaCha20-Poly1305
 *               tag, written into the last 16 bytes of each packet) and passes them to the kernel
 *               with one sendmmsg(). A run of equal-sized, adjacent packets travels as one UDP GSO
 *               message (UDP_SEGMENT): the kernel, or the NIC, cuts it into ordinary datagrams.
 *   receiving   a uv_poll watcher drains the socket with recvmmsg(). With UDP_GRO the kernel may hand
 *               over a coalesced run, cut here at its segment size. Every datagram's tag is checked in
 *               C, then JS is called once per batch with (offset, length, status) triples in a shared
 *               Uint32Array; the bytes stay valid only during that call.
 *
 * On the wire nothing changes: peers using dgram and peers using this interoperate. The tags use the
 * OpenSSL that Node itself carries.
 */
#include "common.h"

#define OPENSSL_SUPPRESS_DEPRECATED 1
#include <node_api.h>
#include <uv.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>

#include <arpa/inet.h>
#include <dlfcn.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/udp.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#ifndef UDP_SEGMENT
#define UDP_SEGMENT 103
#endif
#ifndef UDP_GRO
#define UDP_GRO 104
#endif
#ifndef SOL_UDP
#define SOL_UDP 17
#endif

#define TAG_BYTES 16
#define HEADER_BYTES 64
#define MIN_PACKET (HEADER_BYTES + TAG_BYTES) /* header + tag: the receiver's "short" limit */
#define SLOT 65536                  /* one datagram (or one GRO run) per receive slot */
#define MAX_SEGS 64                 /* kernel limit on segments per GSO message (UDP_MAX_SEGMENTS) */
#define GSO_MAX_BYTES 65000         /* stay under the 64 KiB IP datagram limit with headers */
#define SEND_MAX 1024               /* packets per udpSend call */
#define ROUNDS_PER_WAKEUP 4         /* recvmmsg batches per readiness event: keep the loop fair */

/* Receive statuses reported per packet (src/native/udp.ts mirrors them). */
enum { ST_OK = 0, ST_AUTH = 1, ST_SHORT = 2, ST_TRUNCATED = 3 };

/* ---- packet tags ------------------------------------------------------------------------------ */

/*
 * The tag is ChaCha20-Poly1305 (RFC 8439) with nothing encrypted: the whole packet before the tag is
 * the associated data. The 96-bit nonce is the sender's salt (header bytes 52-59, random, drawn
 * afresh whenever the low 32 bits of its packet numbers wrap) followed by the low 32 bits of the
 * packet number (bytes 20-23), which never repeat under one salt. So one key never sees a nonce
 * twice, which is the one rule this construction needs. Poly1305 costs a fraction of HMAC-SHA-256
 * per byte; the fixed part per packet is one ChaCha20 block for the one-time key.
 */
#define HDR_PSEQ 20
#define HDR_SALT 52

/*
 * The direct path. Through EVP a tag cost about 650 ns per 1.4 KB packet, a third of it EVP's own
 * work per call (provider dispatch, parameter lookups in EVP_MAC_final, the cipher re-init for each
 * nonce). OpenSSL's low-level ChaCha20_ctr32 and Poly1305_* functions do the same arithmetic with
 * the same assembly for about 450 ns. They are not public API: Node's own OpenSSL exports them (the
 * official builds export every OpenSSL symbol), a system libcrypto does not. So they are looked up at
 * run time, and used only when found and when they reproduce the EVP tag of a test packet
 * (mac_init); otherwise every tag goes through EVP as before. Their signatures have not changed
 * since OpenSSL 1.1.0.
 */
typedef void (*chacha_ctr32_fn)(unsigned char *out, const unsigned char *in, size_t len, const unsigned int key[8], const unsigned int counter[4]);
typedef size_t (*poly_size_fn)(void);
typedef void (*poly_init_fn)(void *ctx, const unsigned char key[32]);
typedef void (*poly_update_fn)(void *ctx, const unsigned char *in, size_t len);
typedef void (*poly_final_fn)(void *ctx, unsigned char mac[16]);
static struct {
  int looked;
  chacha_ctr32_fn chacha;
  poly_size_fn size;
  poly_init_fn init;
  poly_update_fn update;
  poly_final_fn final;
} direct;

static void direct_lookup(void) {
  if (direct.looked) return;
  direct.looked = 1;
  direct.chacha = (chacha_ctr32_fn)dlsym(RTLD_DEFAULT, "ChaCha20_ctr32");
  direct.size = (poly_size_fn)dlsym(RTLD_DEFAULT, "Poly1305_ctx_size");
  direct.init = (poly_init_fn)dlsym(RTLD_DEFAULT, "Poly1305_Init");
  direct.update = (poly_update_fn)dlsym(RTLD_DEFAULT, "Poly1305_Update");
  direct.final = (poly_final_fn)dlsym(RTLD_DEFAULT, "Poly1305_Final");
}

typedef struct {
  uint8_t key[32];
  EVP_CIPHER_CTX *chacha; /* keyed once; each packet only sets its nonce */
  EVP_MAC_CTX *poly;
  /* The direct path (NULL: EVP): the key as ChaCha20 words and a Poly1305 state reused per packet
   * (tags are made and checked on the loop thread only). */
  void *p1305;
  unsigned int kw[8];
} mac_key;

static void mac_free(mac_key *k) {
  EVP_CIPHER_CTX_free(k->chacha);
  EVP_MAC_CTX_free(k->poly);
  k->chacha = NULL;
  k->poly = NULL;
  if (k->p1305) {
    OPENSSL_cleanse(k->p1305, direct.size());
    free(k->p1305);
    k->p1305 = NULL;
  }
  OPENSSL_cleanse(k->kw, sizeof k->kw);
  OPENSSL_cleanse(k->key, sizeof k->key);
}

static void put_le64(uint8_t *p, uint64_t v) {
  for (int i = 0; i < 8; i++) p[i] = (uint8_t)(v >> (8 * i));
}

static unsigned int get_le32(const uint8_t *p) {
  return (unsigned int)p[0] | (unsigned int)p[1] << 8 | (unsigned int)p[2] << 16 | (unsigned int)p[3] << 24;
}

/* Poly1305 over the packet as RFC 8439's AEAD construction lays it out: the packet as associated
 * data, zero padding to 16 bytes, no ciphertext, then both lengths. The one-time key is ChaCha20
 * block 0 under the packet's nonce (salt ‖ low 32 bits of the packet number). */
static int tag_evp(const mac_key *k, const uint8_t *pkt, size_t len, uint8_t out[TAG_BYTES]) {
  static const uint8_t zero[32];
  uint8_t iv[16], otk[32], lens[16];
  int n;
  size_t tl;
  memset(iv, 0, 4); /* block counter 0 yields the Poly1305 key */
  memcpy(iv + 4, pkt + HDR_SALT, 8);
  memcpy(iv + 12, pkt + HDR_PSEQ, 4);
  put_le64(lens, len);
  put_le64(lens + 8, 0);
  int ok = EVP_EncryptInit_ex(k->chacha, NULL, NULL, NULL, iv) == 1 &&
           EVP_EncryptUpdate(k->chacha, otk, &n, zero, 32) == 1 &&
           EVP_MAC_init(k->poly, otk, 32, NULL) == 1 &&
           EVP_MAC_update(k->poly, pkt, len) == 1 &&
           ((len & 15) == 0 || EVP_MAC_update(k->poly, zero, 16 - (len & 15)) == 1) &&
           EVP_MAC_update(k->poly, lens, 16) == 1 &&
           EVP_MAC_final(k->poly, out, &tl, TAG_BYTES) == 1 && tl == TAG_BYTES;
  OPENSSL_cleanse(otk, sizeof otk);
  return ok;
}

/* The same tag through the low-level functions (see `direct`). */
static void tag_direct(const mac_key *k, const uint8_t *pkt, size_t len, uint8_t out[TAG_BYTES]) {
  static const uint8_t zero[32];
  uint8_t otk[32], lens[16];
  const unsigned int counter[4] = { 0, get_le32(pkt + HDR_SALT), get_le32(pkt + HDR_SALT + 4), get_le32(pkt + HDR_PSEQ) };
  direct.chacha(otk, zero, 32, k->kw, counter);
  put_le64(lens, len);
  put_le64(lens + 8, 0);
  direct.init(k->p1305, otk);
  direct.update(k->p1305, pkt, len);
  if (len & 15) direct.update(k->p1305, zero, 16 - (len & 15));
  direct.update(k->p1305, lens, 16);
  direct.final(k->p1305, out);
  OPENSSL_cleanse(otk, sizeof otk);
}

/* The tag of the first `len` bytes of a packet (len >= HEADER_BYTES). Returns 0 on an OpenSSL failure. */
static int mac_tag(const mac_key *k, const uint8_t *pkt, size_t len, uint8_t out[TAG_BYTES]) {
  if (k->p1305) { tag_direct(k, pkt, len, out); return 1; }
  return tag_evp(k, pkt, len, out);
}

/* Switches a key to the direct path when the functions are there and agree with EVP on test
 * packets of several lengths (a changed ABI would show here, not on the wire). */
static void mac_try_direct(mac_key *k) {
  direct_lookup();
  if (!direct.chacha || !direct.size || !direct.init || !direct.update || !direct.final) return;
  size_t sz = direct.size();
  if (sz == 0 || sz > 4096) return;
  k->p1305 = malloc(sz);
  if (!k->p1305) return;
  for (int i = 0; i < 8; i++) k->kw[i] = get_le32(k->key + 4 * i);
  uint8_t pkt[1500], a[TAG_BYTES], b[TAG_BYTES];
  for (size_t i = 0; i < sizeof pkt; i++) pkt[i] = (uint8_t)(i * 131 + 7);
  static const size_t lens[] = { HEADER_BYTES, 77, 1404, sizeof pkt };
  for (size_t i = 0; i < sizeof lens / sizeof lens[0]; i++) {
    tag_direct(k, pkt, lens[i], a);
    if (!tag_evp(k, pkt, lens[i], b) || CRYPTO_memcmp(a, b, TAG_BYTES) != 0) {
      OPENSSL_cleanse(k->p1305, sz);
      free(k->p1305);
      k->p1305 = NULL;
      return;
    }
  }
}

/* Returns 0 when OpenSSL cannot provide ChaCha20 or Poly1305. */
static int mac_init(mac_key *k, const uint8_t key[32]) {
  memcpy(k->key, key, 32);
  k->p1305 = NULL;
  k->chacha = EVP_CIPHER_CTX_new();
  EVP_MAC *m = EVP_MAC_fetch(NULL, "POLY1305", NULL);
  k->poly = m ? EVP_MAC_CTX_new(m) : NULL;
  EVP_MAC_free(m); /* the context keeps its own reference */
  if (!k->chacha || !k->poly || EVP_EncryptInit_ex(k->chacha, EVP_chacha20(), NULL, key, NULL) != 1) {
    mac_free(k);
    return 0;
  }
  if (!getenv("GEORM_GEOMSG_TAG_EVP")) mac_try_direct(k);
  return 1;
}

/* Checks the last TAG_BYTES of a packet against the tag of everything before them. */
static int mac_ok(const mac_key *k, const uint8_t *pkt, size_t len) {
  uint8_t t[TAG_BYTES];
  return mac_tag(k, pkt, len - TAG_BYTES, t) && CRYPTO_memcmp(t, pkt + len - TAG_BYTES, TAG_BYTES) == 0;
}

static void mac_finalize(napi_env env, void *data, void *hint) {
  mac_free(data);
  free(data);
}

/* macKey(key: 32-byte Buffer, the tag key of packet.ts) → External, for udpSend and udpRecvStart. */
static napi_value MacKey(napi_env env, napi_callback_info info) {
  size_t argc = 1;
  napi_value argv[1], out;
  CHECK(napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
  void *key;
  size_t len;
  if (argc < 1 || napi_get_buffer_info(env, argv[0], &key, &len) != napi_ok || len != 32) {
    napi_throw_type_error(env, "ERR_INVALID_ARG_TYPE", "key must be a 32-byte Buffer");
    return NULL;
  }
  mac_key *k = malloc(sizeof *k);
  if (!k) return throw_errno(env, ENOMEM, "malloc", NULL, NULL);
  if (!mac_init(k, key)) {
    free(k);
    napi_throw_error(env, "ERR_CRYPTO", "georm_native: OpenSSL offers no ChaCha20/Poly1305");
    return NULL;
  }
  CHECK(napi_create_external(env, k, mac_finalize, NULL, &out));
  return out;
}

/* ---- sockets --------------------------------------------------------------------------------- */

/*
 * GSO after a refusal. A route may refuse a GSO message (see UdpSend) and later accept it again: the
 * path MTU dips and recovers, a route moves off an IPsec tunnel. So a refusal switches GSO off only
 * for a while: the first send after gso_retry_at tries one GSO message again (a probe), and each
 * refusal in a row doubles the wait (gso_first_ms, by default 1 s, up to gso_max_ms, 60 s). A refused
 * probe costs one failed system call and nothing else (the batch is sent again without GSO, as on the
 * first refusal), so at most one refusal per wait: no spinning. A probe passes, and the wait starts
 * over at gso_first_ms, only when a GSO message with segments at least as large as the refused ones
 * is accepted (a path MTU refuses large segments but lets a run of small acks through), and for the
 * wait, only one to the destination whose refusal started it.
 *
 * All refusal errnos are treated alike: they do not separate "this device never does GSO" from "this
 * path, for now" (EINVAL also means a segment larger than the route's MTU; EIO means an IPsec route,
 * which can change), and guessing wrong about "never" would cost GSO for good, which is what this
 * fixes. A device that really never accepts GSO costs one failed call per minute. Only a kernel that
 * does not know UDP_SEGMENT at all (the setsockopt at open fails) is never probed.
 *
 * The state is per socket, not per destination: a GeoMessage socket sends to one endpoint per peer.
 * With several peers, one whose route refuses turns GSO off for the others too until the next probe;
 * remembering the refusing address keeps the others' successes from resetting the wait.
 */
#define GSO_FIRST_MS 1000
#define GSO_MAX_MS 60000

typedef struct {
  int fd;
  int gso;        /* runs are sent as GSO messages now */
  int gso_cap;    /* the kernel knows UDP_SEGMENT and GSO is allowed: gso may be switched back on */
  int gso_probe;  /* gso was switched back on; no GSO message has been accepted since */
  uint32_t gso_first_ms, gso_max_ms; /* the wait after a first refusal, and its cap; first 0 = never re-probe */
  uint32_t gso_wait_ms;              /* the wait after the next refusal */
  uint64_t gso_retry_at;             /* CLOCK_MONOTONIC ms when a probe may go */
  struct sockaddr_storage gso_refused; /* the destination of the last refusal */
  socklen_t gso_refused_len;           /* 0 once a GSO message reached it again */
  uint32_t gso_refused_seg;            /* the segment size refused */
  double gso_refusals;               /* GSO messages refused by the kernel (each sent again without GSO) */
  double gso_reenabled;              /* probes that a GSO message passed: GSO back on */
  int gro;        /* UDP_GRO enabled */
  int closing;    /* udpClose called: no more callbacks */
  int closed;     /* the poll handle is closed and the fd released */
  int finalized;  /* the JS External is gone */
  int receiving;
  uv_poll_t poll;
  napi_env env;
  napi_ref on_batch;
  napi_ref on_writable;
  int want_writable; /* udpWaitWritable asked for one writable notification */
  napi_ref rbuf_ref, meta_ref;
  napi_async_context actx;
  uint8_t *rbuf;
  size_t rlen;
  uint32_t *meta;
  size_t meta_entries; /* triples */
  mac_key key;
  int has_key;
  /* scratch for udpSend */
  struct mmsghdr smsgs[SEND_MAX];
  struct iovec siov[SEND_MAX];
  union {
    char buf[CMSG_SPACE(sizeof(uint16_t))];
    struct cmsghdr align;
  } sctl[SEND_MAX];
  uint32_t spkts[SEND_MAX];
  uint32_t sseg[SEND_MAX]; /* segment size of a GSO message, 0 for a single datagram */
} udp_sock;

static void free_if_done(udp_sock *s) {
  if (!s->closed || !s->finalized) return;
  if (s->has_key) mac_free(&s->key);
  free(s);
}

static void on_poll_closed(uv_handle_t *h) {
  udp_sock *s = h->data;
  s->closed = 1;
  free_if_done(s);
}

/*
 * Stops callbacks, drops the references and closes the fd at once, so the port can be bound again
 * right away (uv_poll_stop has already removed the fd from the loop's epoll set and any pending
 * event for it); the handle's memory goes when libuv's close callback runs.
 */
static void begin_close(napi_env env, udp_sock *s) {
  if (s->closing) return;
  s->closing = 1;
  uv_poll_stop(&s->poll);
  close(s->fd);
  s->fd = -1;
  if (s->receiving) {
    napi_delete_reference(env, s->on_batch);
    napi_delete_reference(env, s->on_writable);
    napi_delete_reference(env, s->rbuf_ref);
    napi_delete_reference(env, s->meta_ref);
    napi_async_destroy(env, s->actx);
    s->receiving = 0;
  }
  uv_close((uv_handle_t *)&s->poll, on_poll_closed);
}

static void sock_finalize(napi_env env, void *data, void *hint) {
  udp_sock *s = data;
  s->finalized = 1;
  if (!s->closing) begin_close(env, s);
  free_if_done(s);
}

static udp_sock *arg_sock(napi_env env, napi_value v) {
  void *p = NULL;
  if (napi_get_value_external(env, v, &p) != napi_ok || !p) {
    napi_throw_type_error(env, "ERR_INVALID_ARG_TYPE", "not a georm UDP socket");
    return NULL;
  }
  udp_sock *s = p;
  if (s->closing) {
    napi_throw_error(env, "ERR_SOCKET_CLOSED", "UDP socket closed");
    return NULL;
  }
  return s;
}

static int make_addr(int ipv6, const char *address, int port, struct sockaddr_storage *ss, socklen_t *len) {
  memset(ss, 0, sizeof *ss);
  if (ipv6) {
    struct sockaddr_in6 *a = (struct sockaddr_in6 *)ss;
    a->sin6_family = AF_INET6;
    a->sin6_port = htons((uint16_t)port);
    *len = sizeof *a;
    return inet_pton(AF_INET6, address, &a->sin6_addr) == 1;
  }
  struct sockaddr_in *a = (struct sockaddr_in *)ss;
  a->sin_family = AF_INET;
  a->sin_port = htons((uint16_t)port);
  *len = sizeof *a;
  return inet_pton(AF_INET, address, &a->sin_addr) == 1;
}

static void set_buf(int fd, int opt_force, int opt, int bytes) {
  /* The FORCE variants pass net.core.[rw]mem_max when privileged; otherwise the kernel clamps. */
  if (setsockopt(fd, SOL_SOCKET, opt_force, &bytes, sizeof bytes) != 0) setsockopt(fd, SOL_SOCKET, opt, &bytes, sizeof bytes);
}

/* udpAddress(ipv6, address, port) → Buffer holding the sockaddr (built once per destination). */
static napi_value UdpAddress(napi_env env, napi_callback_info info) {
  size_t argc = 3;
  napi_value argv[3], out;
  CHECK(napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
  bool ipv6 = false;
  char address[INET6_ADDRSTRLEN + 1];
  int32_t port;
  napi_get_value_bool(env, argv[0], &ipv6);
  if (!arg_str(env, argv[1], "address", address, sizeof address) || !arg_int(env, argv[2], "port", &port)) return NULL;
  struct sockaddr_storage ss;
  socklen_t len;
  if (port < 0 || port > 65535 || !make_addr(ipv6, address, port, &ss, &len)) {
    napi_throw_range_error(env, "ERR_INVALID_ADDRESS", "not an IP address and port");
    return NULL;
  }
  void *data;
  CHECK(napi_create_buffer_copy(env, len, &ss, &data, &out));
  return out;
}

/*
 * udpOpen(ipv6, address, port, bufferBytes) → [External, boundPort]: a non-blocking UDP
 * socket bound to address:port (0 = any free port) with the given socket buffer sizes.
 */
static napi_value UdpOpen(napi_env env, napi_callback_info info) {
  size_t argc = 4;
  napi_value argv[4], out, v;
  CHECK(napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
  bool ipv6 = false;
  char address[INET6_ADDRSTRLEN + 1];
  int32_t port, bufbytes;
  napi_get_value_bool(env, argv[0], &ipv6);
  if (!arg_str(env, argv[1], "address", address, sizeof address) || !arg_int(env, argv[2], "port", &port) ||
      !arg_int(env, argv[3], "bufferBytes", &bufbytes))
    return NULL;
  struct sockaddr_storage ss;
  socklen_t alen;
  if (port < 0 || port > 65535 || !make_addr(ipv6, address, port, &ss, &alen)) {
    napi_throw_range_error(env, "ERR_INVALID_ADDRESS", "not an IP address and port");
    return NULL;
  }
  int fd = socket(ipv6 ? AF_INET6 : AF_INET, SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd < 0) return throw_errno(env, errno, "socket", NULL, NULL);
  if (bind(fd, (struct sockaddr *)&ss, alen) != 0) {
    int e = errno;
    close(fd);
    return throw_errno(env, e, "bind", address, NULL);
  }
  if (bufbytes > 0) {
    set_buf(fd, SO_RCVBUFFORCE, SO_RCVBUF, bufbytes);
    set_buf(fd, SO_SNDBUFFORCE, SO_SNDBUF, bufbytes);
  }
  udp_sock *s = calloc(1, sizeof *s);
  if (!s) {
    close(fd);
    return throw_errno(env, ENOMEM, "calloc", NULL, NULL);
  }
  s->fd = fd;
  s->env = env;
  int zero = 0, one = 1;
  /* Probing with segment size 0 (= off) tells whether this kernel knows UDP_SEGMENT at all. */
  s->gso = s->gso_cap = setsockopt(fd, SOL_UDP, UDP_SEGMENT, &zero, sizeof zero) == 0;
  s->gso_first_ms = s->gso_wait_ms = GSO_FIRST_MS;
  s->gso_max_ms = GSO_MAX_MS;
  s->gro = setsockopt(fd, SOL_UDP, UDP_GRO, &one, sizeof one) == 0;
  uv_loop_t *loop;
  if (napi_get_uv_event_loop(env, &loop) != napi_ok || uv_poll_init(loop, &s->poll, fd) != 0) {
    close(fd);
    free(s);
    napi_throw_error(env, "EINTERNAL", "georm_native: cannot watch the UDP socket");
    return NULL;
  }
  s->poll.data = s;
  struct sockaddr_storage bound;
  socklen_t blen = sizeof bound;
  int bport = port;
  if (getsockname(fd, (struct sockaddr *)&bound, &blen) == 0)
    bport = ntohs(bound.ss_family == AF_INET6 ? ((struct sockaddr_in6 *)&bound)->sin6_port : ((struct sockaddr_in *)&bound)->sin_port);
  CHECK(napi_create_array_with_length(env, 2, &out));
  CHECK(napi_create_external(env, s, sock_finalize, NULL, &v));
  napi_set_element(env, out, 0, v);
  napi_create_int32(env, bport, &v);
  napi_set_element(env, out, 1, v);
  return out;
}

/* ---- receiving -------------------------------------------------------------------------------- */

static int gro_size(struct msghdr *m) {
  for (struct cmsghdr *c = CMSG_FIRSTHDR(m); c; c = CMSG_NXTHDR(m, c)) {
    if (c->cmsg_level == SOL_UDP && c->cmsg_type == UDP_GRO) {
      int v;
      memcpy(&v, CMSG_DATA(c), sizeof v);
      return v;
    }
  }
  return 0;
}

static uint32_t check_packet(const udp_sock *s, const uint8_t *p, size_t len) {
  if (len < MIN_PACKET) return ST_SHORT;
  if (s->has_key && !mac_ok(&s->key, p, len)) return ST_AUTH;
  return ST_OK;
}

/* One recvmmsg into the receive buffer; fills meta. Returns the number of packets, 0 when drained. */
static size_t drain_once(udp_sock *s) {
  enum { MAXV = 64 };
  size_t slots = s->rlen / SLOT;
  if (slots > MAXV) slots = MAXV;
  struct mmsghdr msgs[MAXV];
  struct iovec iov[MAXV];
  union {
    char buf[CMSG_SPACE(sizeof(int))];
    struct cmsghdr align;
  } ctl[MAXV];
  for (size_t i = 0; i < slots; i++) {
    iov[i].iov_base = s->rbuf + i * SLOT;
    iov[i].iov_len = SLOT;
    memset(&msgs[i].msg_hdr, 0, sizeof msgs[i].msg_hdr);
    msgs[i].msg_hdr.msg_iov = &iov[i];
    msgs[i].msg_hdr.msg_iovlen = 1;
    msgs[i].msg_hdr.msg_control = ctl[i].buf;
    msgs[i].msg_hdr.msg_controllen = sizeof ctl[i].buf;
  }
  int n;
  do n = recvmmsg(s->fd, msgs, (unsigned)slots, MSG_DONTWAIT, NULL);
  while (n < 0 && errno == EINTR);
  if (n <= 0) return 0; /* EAGAIN, or an error that a later read will not fix either */
  size_t e = 0;
  for (int i = 0; i < n; i++) {
    size_t len = msgs[i].msg_len, base = (size_t)i * SLOT;
    if (msgs[i].msg_hdr.msg_flags & MSG_TRUNC) {
      if (e < s->meta_entries) {
        s->meta[3 * e] = (uint32_t)base;
        s->meta[3 * e + 1] = (uint32_t)(len > SLOT ? SLOT : len);
        s->meta[3 * e + 2] = ST_TRUNCATED;
        e++;
      }
      continue;
    }
    size_t seg = (size_t)gro_size(&msgs[i].msg_hdr);
    if (seg == 0 || seg > len) seg = len;
    for (size_t off = 0; off < len && e < s->meta_entries; off += seg) {
      size_t l = len - off < seg ? len - off : seg;
      s->meta[3 * e] = (uint32_t)(base + off);
      s->meta[3 * e + 1] = (uint32_t)l;
      s->meta[3 * e + 2] = check_packet(s, s->rbuf + base + off, l);
      e++;
    }
  }
  return e;
}

/* Calls a JS callback with make_callback (promises settled in it run when it returns). 0 if it threw. */
static int call_js(udp_sock *s, napi_ref ref, size_t argc, napi_value *argv) {
  napi_env env = s->env;
  napi_value cb, recv, res;
  if (napi_get_reference_value(env, ref, &cb) != napi_ok || !cb) return 0;
  napi_get_global(env, &recv); /* make_callback needs an object receiver */
  napi_make_callback(env, s->actx, recv, cb, argc, argv, &res);
  bool pending = false;
  napi_is_exception_pending(env, &pending);
  if (pending) {
    napi_value err;
    napi_get_and_clear_last_exception(env, &err);
    napi_fatal_exception(env, err); /* to process 'uncaughtException', as a throwing event handler would */
    return 0;
  }
  return 1;
}

static void on_io(uv_poll_t *h, int status, int events) {
  udp_sock *s = h->data;
  if (s->closing || !s->receiving) return;
  napi_env env = s->env;
  napi_handle_scope scope;
  if (napi_open_handle_scope(env, &scope) != napi_ok) return;
  if ((events & UV_WRITABLE) && s->want_writable) {
    /* One notification per request: back to reading only, then let JS send what it held back. */
    s->want_writable = 0;
    uv_poll_start(&s->poll, UV_READABLE, on_io);
    if (!call_js(s, s->on_writable, 0, NULL)) events = 0;
  }
  for (int round = 0; (events & UV_READABLE) && round < ROUNDS_PER_WAKEUP && !s->closing; round++) {
    size_t n = drain_once(s);
    if (n == 0) break;
    napi_value arg;
    napi_create_uint32(env, (uint32_t)n, &arg);
    if (!call_js(s, s->on_batch, 1, &arg)) break;
  }
  napi_close_handle_scope(env, scope);
}

/* A Uint32Array's data and element count; 0 for anything else. */
static int u32_array(napi_env env, napi_value v, uint32_t **data, size_t *len) {
  napi_typedarray_type tt;
  napi_value ab;
  size_t off;
  void *p;
  if (napi_get_typedarray_info(env, v, &tt, len, &p, &ab, &off) != napi_ok || tt != napi_uint32_array) return 0;
  *data = p;
  return 1;
}

/* The key of an optional `key: External|null` argument (macKey), or NULL. */
static const mac_key *opt_key(napi_env env, napi_value v) {
  napi_valuetype t;
  void *key = NULL;
  if (napi_typeof(env, v, &t) == napi_ok && t == napi_external) napi_get_value_external(env, v, &key);
  return key;
}

/*
 * udpRecvStart(sock, recvBuffer, meta: Uint32Array, key: External|null, onBatch(count), onWritable()):
 * starts delivering. recvBuffer holds up to 64 slots of 64 KiB (its size decides how many); meta
 * receives (offset, length, status) triples. onWritable answers udpWaitWritable.
 */
static napi_value UdpRecvStart(napi_env env, napi_callback_info info) {
  size_t argc = 6;
  napi_value argv[6], name;
  CHECK(napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
  udp_sock *s = arg_sock(env, argv[0]);
  if (!s) return NULL;
  if (s->receiving) {
    napi_throw_error(env, "ERR_SOCKET_RECEIVING", "already receiving");
    return NULL;
  }
  void *rbuf;
  uint32_t *meta;
  size_t rlen, mlen;
  if (napi_get_buffer_info(env, argv[1], &rbuf, &rlen) != napi_ok || rlen < SLOT || !u32_array(env, argv[2], &meta, &mlen) || mlen < 3) {
    napi_throw_type_error(env, "ERR_INVALID_ARG_TYPE", "recvStart needs a Buffer of at least 64 KiB and a Uint32Array");
    return NULL;
  }
  const mac_key *key = opt_key(env, argv[3]);
  napi_valuetype ft, wt;
  napi_typeof(env, argv[4], &ft);
  napi_typeof(env, argv[5], &wt);
  if (ft != napi_function || wt != napi_function) {
    napi_throw_type_error(env, "ERR_INVALID_ARG_TYPE", "onBatch and onWritable must be functions");
    return NULL;
  }
  s->rbuf = rbuf;
  s->rlen = rlen;
  s->meta = meta;
  s->meta_entries = mlen / 3;
  if (key) {
    /* Contexts of its own: the key's External may be collected while the socket lives. */
    if (!mac_init(&s->key, key->key)) {
      napi_throw_error(env, "ERR_CRYPTO", "georm_native: OpenSSL offers no ChaCha20/Poly1305");
      return NULL;
    }
    s->has_key = 1;
  }
  CHECK(napi_create_reference(env, argv[4], 1, &s->on_batch));
  CHECK(napi_create_reference(env, argv[5], 1, &s->on_writable));
  CHECK(napi_create_reference(env, argv[1], 1, &s->rbuf_ref));
  CHECK(napi_create_reference(env, argv[2], 1, &s->meta_ref));
  CHECK(napi_create_string_utf8(env, "georm:udp", NAPI_AUTO_LENGTH, &name));
  CHECK(napi_async_init(env, NULL, name, &s->actx));
  s->receiving = 1;
  int r = uv_poll_start(&s->poll, UV_READABLE, on_io);
  if (r != 0) return throw_errno(env, -r, "uv_poll_start", NULL, NULL);
  return NULL;
}

/* ---- sending --------------------------------------------------------------------------------- */

static uint64_t now_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC_COARSE, &ts); /* a few ms of resolution is plenty for waits of seconds */
  return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

/* The kernel refused a GSO message of segment size seg to addr: off until the wait is over (see GSO_FIRST_MS). */
static void gso_refused(udp_sock *s, const void *addr, size_t alen, uint32_t seg) {
  s->gso = 0;
  s->gso_probe = 0;
  s->gso_refusals++;
  s->gso_retry_at = now_ms() + s->gso_wait_ms;
  s->gso_wait_ms = s->gso_wait_ms >= s->gso_max_ms / 2 ? s->gso_max_ms : 2 * s->gso_wait_ms;
  if (alen > sizeof s->gso_refused) alen = sizeof s->gso_refused;
  memcpy(&s->gso_refused, addr, alen);
  s->gso_refused_len = (socklen_t)alen;
  s->gso_refused_seg = seg;
}

/*
 * GSO messages to addr were accepted, the largest segment size seg: a probe passed if seg is at least
 * the refused size, and then the wait starts over if addr had refused.
 */
static void gso_accepted(udp_sock *s, const void *addr, size_t alen, uint32_t seg) {
  if (seg < s->gso_refused_seg) return;
  if (s->gso_probe) {
    s->gso_probe = 0;
    s->gso_reenabled++;
  }
  if (alen == s->gso_refused_len && memcmp(addr, &s->gso_refused, alen) == 0) {
    s->gso_wait_ms = s->gso_first_ms;
    s->gso_refused_len = 0;
  }
}

/*
 * Number of packets, from i, that can go as one GSO message: adjacent in the buffer, all of the first
 * packet's size except possibly the last, within the kernel's segment and size limits.
 */
static size_t gso_run(const uint32_t *meta, size_t i, size_t count) {
  uint32_t seg = meta[2 * i + 1], total = seg;
  size_t j = i + 1;
  while (j < count && j - i < MAX_SEGS) {
    uint32_t off = meta[2 * j], len = meta[2 * j + 1];
    if (off != meta[2 * (j - 1)] + meta[2 * (j - 1) + 1] || meta[2 * (j - 1) + 1] != seg || len > seg || total + len > GSO_MAX_BYTES) break;
    total += len;
    j++;
  }
  return j - i;
}

/*
 * udpSend(sock, buffer, meta: Uint32Array of (offset, length) pairs, count, sockaddr: Buffer,
 * key: External|null) → packets handed to the kernel. Fewer than count when the route fails: the
 * rest are lost, as dropped datagrams would be, and retransmission recovers them. When the socket
 * buffer is full (EAGAIN, ENOBUFS) it returns -(sent + 1) instead: the rest were not sent and may be
 * sent again once udpWaitWritable has answered. Each packet's last 16 bytes receive its tag first.
 */
static napi_value UdpSend(napi_env env, napi_callback_info info) {
  size_t argc = 6;
  napi_value argv[6], out;
  CHECK(napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
  udp_sock *s = arg_sock(env, argv[0]);
  if (!s) return NULL;
  void *buf, *addr;
  uint32_t *meta;
  size_t blen, mlen, alen;
  int32_t count;
  if (napi_get_buffer_info(env, argv[1], &buf, &blen) != napi_ok || !u32_array(env, argv[2], &meta, &mlen) ||
      !arg_int(env, argv[3], "count", &count) || napi_get_buffer_info(env, argv[4], &addr, &alen) != napi_ok) {
    napi_throw_type_error(env, "ERR_INVALID_ARG_TYPE", "udpSend(sock, Buffer, Uint32Array, count, sockaddr, key)");
    return NULL;
  }
  const mac_key *key = opt_key(env, argv[5]);
  if (count < 0 || count > SEND_MAX || (size_t)count * 2 > mlen) {
    napi_throw_range_error(env, "ERR_OUT_OF_RANGE", "count out of range");
    return NULL;
  }
  uint8_t *b = buf;
  for (int32_t i = 0; i < count; i++) {
    uint32_t off = meta[2 * i], len = meta[2 * i + 1];
    if (len < MIN_PACKET || (size_t)off + len > blen || len > SLOT) {
      napi_throw_range_error(env, "ERR_OUT_OF_RANGE", "packet outside the buffer or shorter than a header and tag");
      return NULL;
    }
    if (key && !mac_tag(key, b + off, len - TAG_BYTES, b + off + len - TAG_BYTES)) {
      napi_throw_error(env, "ERR_CRYPTO", "georm_native: packet tag failed");
      return NULL;
    }
  }
  size_t pi = 0;
  int blocked = 0;
  if (!s->gso && s->gso_cap && s->gso_first_ms && now_ms() >= s->gso_retry_at) s->gso = s->gso_probe = 1;
  while (pi < (size_t)count) {
    size_t nm = 0, p = pi;
    while (p < (size_t)count && nm < SEND_MAX) {
      size_t run = s->gso ? gso_run(meta, p, (size_t)count) : 1;
      struct msghdr *m = &s->smsgs[nm].msg_hdr;
      memset(m, 0, sizeof *m);
      m->msg_name = addr;
      m->msg_namelen = (socklen_t)alen;
      s->siov[nm].iov_base = b + meta[2 * p];
      s->siov[nm].iov_len = 0;
      for (size_t k = p; k < p + run; k++) s->siov[nm].iov_len += meta[2 * k + 1];
      m->msg_iov = &s->siov[nm];
      m->msg_iovlen = 1;
      if (run > 1) {
        m->msg_control = s->sctl[nm].buf;
        m->msg_controllen = sizeof s->sctl[nm].buf;
        struct cmsghdr *c = CMSG_FIRSTHDR(m);
        c->cmsg_level = SOL_UDP;
        c->cmsg_type = UDP_SEGMENT;
        c->cmsg_len = CMSG_LEN(sizeof(uint16_t));
        uint16_t seg = (uint16_t)meta[2 * p + 1];
        memcpy(CMSG_DATA(c), &seg, sizeof seg);
      }
      s->spkts[nm] = (uint32_t)run;
      s->sseg[nm] = run > 1 ? meta[2 * p + 1] : 0;
      nm++;
      p += run;
    }
    int r = sendmmsg(s->fd, s->smsgs, (unsigned)nm, MSG_DONTWAIT);
    if (r < 0) {
      if (errno == EINTR) continue;
      /*
       * Some routes refuse GSO: IPsec (EIO), a device without TX checksum offload on older kernels (EIO),
       * a path MTU below the segment size (EMSGSIZE, where a single datagram would be fragmented).
       * Segment here for a while (gso_refused) and send the same messages again: nothing of the
       * batch is lost.
       */
      if ((errno == EIO || errno == EINVAL || errno == EOPNOTSUPP || errno == EMSGSIZE) && s->gso && s->spkts[0] > 1) {
        gso_refused(s, addr, alen, s->sseg[0]);
        continue;
      }
      blocked = errno == EAGAIN || errno == EWOULDBLOCK || errno == ENOBUFS;
      break; /* blocked, or ENETUNREACH, …: the rest is lost like dropped datagrams */
    }
    /* A partial count means message r failed; the next round starts there and sees its error. */
    uint32_t gso_seg = 0; /* the largest segment size of the GSO messages accepted */
    for (int k = 0; k < r; k++) {
      pi += s->spkts[k];
      if (s->sseg[k] > gso_seg) gso_seg = s->sseg[k];
    }
    if (gso_seg && (s->gso_probe || s->gso_refused_len)) gso_accepted(s, addr, alen, gso_seg);
  }
  CHECK(napi_create_int64(env, blocked ? -(int64_t)pi - 1 : (int64_t)pi, &out));
  return out;
}

/* udpWaitWritable(sock): onWritable (see udpRecvStart) is called once the socket can take more. */
static napi_value UdpWaitWritable(napi_env env, napi_callback_info info) {
  size_t argc = 1;
  napi_value argv[1];
  CHECK(napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
  udp_sock *s = arg_sock(env, argv[0]);
  if (!s) return NULL;
  if (!s->receiving) {
    napi_throw_error(env, "ERR_SOCKET_NOT_RECEIVING", "udpWaitWritable needs udpRecvStart first");
    return NULL;
  }
  if (s->want_writable) return NULL;
  s->want_writable = 1;
  int r = uv_poll_start(&s->poll, UV_READABLE | UV_WRITABLE, on_io);
  if (r != 0) return throw_errno(env, -r, "uv_poll_start", NULL, NULL);
  return NULL;
}

/* udpClose(sock): stops receiving and closes the socket (the fd once libuv has let go of it). */
static napi_value UdpClose(napi_env env, napi_callback_info info) {
  size_t argc = 1;
  napi_value argv[1];
  CHECK(napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
  void *p = NULL;
  if (napi_get_value_external(env, argv[0], &p) != napi_ok || !p) {
    napi_throw_type_error(env, "ERR_INVALID_ARG_TYPE", "not a georm UDP socket");
    return NULL;
  }
  begin_close(env, p);
  return NULL;
}

/*
 * udpInfo(sock) → [gso, gro, gsoRefusals, gsoReenabled, directTags]: what the socket currently uses. gso is false
 * while a refusal has it off and while a probe has not yet passed a GSO message.
 */
static napi_value UdpInfo(napi_env env, napi_callback_info info) {
  size_t argc = 1;
  napi_value argv[1], out, v;
  CHECK(napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
  udp_sock *s = arg_sock(env, argv[0]);
  if (!s) return NULL;
  CHECK(napi_create_array_with_length(env, 5, &out));
  napi_get_boolean(env, s->gso && !s->gso_probe, &v);
  napi_set_element(env, out, 0, v);
  napi_get_boolean(env, s->gro, &v);
  napi_set_element(env, out, 1, v);
  napi_create_double(env, s->gso_refusals, &v);
  napi_set_element(env, out, 2, v);
  napi_create_double(env, s->gso_reenabled, &v);
  napi_set_element(env, out, 3, v);
  napi_get_boolean(env, s->has_key && s->key.p1305 != NULL, &v);
  napi_set_element(env, out, 4, v);
  return out;
}

/*
 * udpGso(sock, firstWaitMs, maxWaitMs): how GSO comes back after a refusal (see GSO_FIRST_MS).
 * firstWaitMs 0 = never (off for good after a refusal); -1 = GSO off now and for good.
 */
static napi_value UdpGso(napi_env env, napi_callback_info info) {
  size_t argc = 3;
  napi_value argv[3];
  CHECK(napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
  udp_sock *s = arg_sock(env, argv[0]);
  int32_t first, max;
  if (!s || !arg_int(env, argv[1], "firstWaitMs", &first) || !arg_int(env, argv[2], "maxWaitMs", &max)) return NULL;
  if (first < -1 || max < first) {
    napi_throw_range_error(env, "ERR_OUT_OF_RANGE", "udpGso: need -1 <= firstWaitMs <= maxWaitMs");
    return NULL;
  }
  if (first < 0) {
    s->gso = s->gso_cap = s->gso_probe = 0;
    return NULL;
  }
  s->gso_first_ms = s->gso_wait_ms = (uint32_t)first;
  s->gso_max_ms = (uint32_t)max;
  return NULL;
}

void georm_udp_define(napi_env env, napi_value exports) {
  napi_property_descriptor props[] = {
    EXPORT_FN("macKey", MacKey),
    EXPORT_FN("udpAddress", UdpAddress),
    EXPORT_FN("udpOpen", UdpOpen),
    EXPORT_FN("udpRecvStart", UdpRecvStart),
    EXPORT_FN("udpSend", UdpSend),
    EXPORT_FN("udpWaitWritable", UdpWaitWritable),
    EXPORT_FN("udpInfo", UdpInfo),
    EXPORT_FN("udpGso", UdpGso),
    EXPORT_FN("udpClose", UdpClose),
  };
  napi_define_properties(env, exports, sizeof props / sizeof props[0], props);
}
