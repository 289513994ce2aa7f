/* Helpers shared by the addon's C files (defined in georm_native.c). */
#ifndef GEORM_COMMON_H
#define GEORM_COMMON_H

/* Included first by every C file of the addon (binding.gyp defines both as well). */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#ifndef NAPI_VERSION
#define NAPI_VERSION 8
#endif

#include <node_api.h>
#include <stddef.h>
#include <stdint.h>

/* For N-API calls that fail only on a programming error: throw and return NULL from the binding. */
#define CHECK(call)                                                                                  \
  do {                                                                                               \
    if ((call) != napi_ok) {                                                                         \
      napi_throw_error(env, "EINTERNAL", "georm_native: N-API call failed: " #call);                 \
      return NULL;                                                                                   \
    }                                                                                                \
  } while (0)

/* Builds an Error with code (errno name), errno, syscall and optional path; hint is appended to the message. */
napi_value make_errno_error(napi_env env, int err, const char *syscall, const char *path, const char *hint);
/* Throws make_errno_error(...) and returns NULL (for `return throw_errno(...)`). */
napi_value throw_errno(napi_env env, int err, const char *syscall, const char *path, const char *hint);
/* Argument readers: on a wrong type they throw a TypeError and return 0. */
int arg_int(napi_env env, napi_value v, const char *what, int32_t *out);
int arg_str(napi_env env, napi_value v, const char *what, char *buf, size_t len);

/* One exported function in a napi_property_descriptor table. */
#define EXPORT_FN(name, fn) { name, NULL, fn, NULL, NULL, NULL, napi_enumerable, NULL }

/* Adds the GeoMessage datagram functions (udp.c) to the module's exports. */
void georm_udp_define(napi_env env, napi_value exports);

#endif
