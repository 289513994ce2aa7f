{
  # The native addon (native-bindings/georm_native.c). Built by node-gyp at `npm install` against the
  # local Node headers (npm passes its nodedir), loaded by node-gyp-build from src/native/index.ts.
  "targets": [
    {
      "target_name": "georm_native",
      "sources": ["native-bindings/georm_native.c", "native-bindings/udp.c"],
      "cflags": ["-std=gnu11", "-Wall", "-Wextra", "-Wno-unused-parameter", "-O2", "-fvisibility=hidden"],
      "defines": ["_GNU_SOURCE", "NAPI_VERSION=8"],
      # ChaCha20/Poly1305 for the GeoMessage packet tags (udp.c) resolve against the OpenSSL inside the node binary
      # (official and NodeSource builds export it; distribution builds load libcrypto globally).
      "conditions": [
        ["OS!='linux'", { "type": "none" }]
      ]
    }
  ]
}
