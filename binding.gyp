{
  # The native addon (native-bindings/georm_native.c). Built by node-gyp at `npm install` against the
  # local Node headers (npm passes its nodedir), loaded by node-gyp-build from src/native/index.ts.
  "targets": [
    {
      "target_name": "georm_native",
      "sources": ["native-bindings/georm_native.c"],
      "cflags": ["-std=gnu11", "-Wall", "-Wextra", "-Wno-unused-parameter", "-O2"],
      "defines": ["_GNU_SOURCE", "NAPI_VERSION=8"],
      "conditions": [
        ["OS!='linux'", { "type": "none" }]
      ]
    }
  ]
}
