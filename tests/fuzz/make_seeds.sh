#!/usr/bin/env bash
# Regenerates the seed corpora in tests/fuzz/corpus/ from the text below
# (protoc --encode with the repository's protos). Run from anywhere; the
# seeds are checked in, so this is only needed when a seed or a proto
# changes. See each fuzzer's header comment for its input format.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
C="$ROOT/tests/fuzz/corpus"
P="$ROOT/proto"

enc() {  # enc MESSAGE FILE.proto TEXT → binary on stdout
  printf '%s\n' "$3" | protoc -I"$P" --encode="halloc.v1.$1" "$P/halloc/v1/$2"
}
# A byte given as a number (0-255) on stdout.
byte() { printf "\\$(printf '%03o' "$1")"; }
# One broker_record_fuzzer record: hdr, then the payload from stdin with
# its 16-bit little-endian length.
record() {
  local hdr=$1 tmp; tmp=$(mktemp)
  cat >"$tmp"
  local n; n=$(stat -c %s "$tmp")
  byte "$hdr"; byte $((n & 255)); byte $((n >> 8)); cat "$tmp"
  rm -f "$tmp"
}

rm -rf "$C"
mkdir -p "$C"/{broker_record_fuzzer,layout_fuzzer,policy_fuzzer,metadata_fuzzer}

# --- broker_record_fuzzer: [flags] then records --------------------------
B="$C/broker_record_fuzzer"
hello='hello { version: 2 challenge: "0123456789abcdef" uid: 1000 gid: 1000 pid: 4242 }'
{ byte 8; enc BrokerFrame broker.proto "$hello" | record 0; } >"$B/hello"
{ byte 8
  enc BrokerFrame broker.proto "$hello" | record 0
  enc BrokerFrame broker.proto 'reply { welcome { session_id: 3 session_token: "00112233445566778899aabbccddeeff" exe: "/usr/bin/camera" } }' | record 0
} >"$B/handshake"
{ byte 0
  enc BrokerFrame broker.proto 'reply { code: 8 message: "too many connections from uid 1000" }' | record 0
} >"$B/refused"
{ byte 9
  enc BrokerFrame broker.proto "$hello" | record 0
  enc BrokerFrame broker.proto 'buffer { buffer_id: 7 size: 4096 cpu_access: CPU_ACCESS_READ_WRITE }' | record 1
  enc BrokerFrame broker.proto 'buffers { buffers { buffer_id: 8 size: 8192 cpu_access: CPU_ACCESS_READ } buffers { buffer_id: 9 size: 8192 cpu_access: CPU_ACCESS_READ } buffers { buffer_id: 10 size: 8192 cpu_access: CPU_ACCESS_READ } }' | record 3
} >"$B/hello_buffer_buffers"
{ byte 13
  enc BrokerFrame broker.proto "$hello" | record 0
  enc BrokerFrame broker.proto 'reply { request_id: 1 allocate { buffers { id: 11 name: "cam" size: 3110400 usage: 131123 backend: "memfd" cpu_access: CPU_ACCESS_READ_WRITE owned: true } buffers { id: 12 name: "cam" size: 3110400 } } }' | record 2
  enc BrokerFrame broker.proto 'reply { request_id: 2 code: 7 message: "rule denies Allocate" }' | record 0
} >"$B/reply_allocate"
{ byte 9
  enc BrokerRequest broker.proto 'request_id: 1 verify { challenge: "0123456789abcdef" }' | record 0
  enc BrokerRequest broker.proto 'request_id: 2 allocate { desc { name: "cam" usage: 131123 image { width: 1920 height: 1080 format: 842094158 } } count: 2 }' | record 0
  enc BrokerRequest broker.proto 'request_id: 3 release { buffer_ids: 11 buffer_ids: 12 }' | record 0
} >"$B/requests"
# Edge cases: 64 and 65 fds, an oversized payload, an empty record, the
# sender closing, SendRecord's own limits.
{ byte 9; enc BrokerFrame broker.proto 'buffer { buffer_id: 1 }' | record 6; } >"$B/fds_64"
{ byte 9; enc BrokerFrame broker.proto 'buffer { buffer_id: 1 }' | record 7
  enc BrokerFrame broker.proto 'buffer { buffer_id: 2 }' | record 1; } >"$B/fds_65_then_1"
{ byte 1; printf 'x' | record 9; printf 'y' | record 0; } >"$B/oversized_1fd"
{ byte 3; printf '' | record 0; printf 'z' | record 0; } >"$B/empty_record_then_close"
{ byte 12; printf 'abc' | record 15; printf 'abc' | record 7; printf 'ok' | record 2; } >"$B/send_record_limits"

# --- layout_fuzzer: [sel] [rule if sel&4] BufferDescriptor ----------------
L="$C/layout_fuzzer"
desc() { enc BufferDescriptor types.proto "$1"; }
NV12=842094158; YV12=842094169; ARGB8888=875713089; XRGB8888=875713112
P010=808530000; YUYV=1448695129; NV24=875714126; YUV420=842093913
{ byte 0; desc "name: \"cam\" usage: 131075 image { width: 1920 height: 1080 format: $NV12 }"; } >"$L/nv12_camera"
{ byte 8; desc "usage: 256 image { width: 641 height: 481 format: $YV12 }"; } >"$L/yv12_odd_gpu"
{ byte 1; desc "name: \"ui\" usage: 2048 image { width: 4096 height: 2160 format: $ARGB8888 }"; } >"$L/argb_overlay"
{ byte 2; desc "usage: 4194304 image { width: 1280 height: 720 format: $P010 layer_count: 6 }"; } >"$L/p010_layers_decoder"
{ byte 3; desc "usage: 51 image { width: 64 height: 64 format: $NV12 }"; } >"$L/nv12_small_limits"
{ byte 0; desc "usage: 65536 image { width: 33 height: 17 format: $YUYV }"; } >"$L/yuyv_odd_encoder"
{ byte 16; desc "usage: 134217728 image { width: 100 height: 75 format: $NV24 }"; } >"$L/nv24_jpeg_count64"
{ byte 0; desc "usage: 768 image { width: 16384 height: 16384 format: $YUV420 }"; } >"$L/yuv420_max_dim"
{ byte 0; desc 'name: "blob" usage: 51 size: 65536'; } >"$L/blob"
{ byte 0; desc "usage: 16384 image { width: 64 height: 64 format: $NV12 }"; } >"$L/protected"
# X_TILED is declared by the selector; the input's rule is Y_TILED
# (I915_FORMAT_MOD_Y_TILED = 0x0100000000000002) with 128/32/4096.
{ byte 4; printf '\x02\x00\x00\x00\x00\x00\x00\x01\x80\x00\x20\x00\x00\x10'
  desc "usage: 512 image { width: 1024 height: 768 format: $XRGB8888 modifier: 72057594037927938 }"; } >"$L/y_tiled_rule"
{ byte 4; printf '\x02\x00\x00\x00\x00\x00\x00\x01\x80\x00\x20\x00\x00\x10'
  desc "usage: 512 image { width: 1024 height: 768 format: $XRGB8888 modifier: 72057594037927937 }"; } >"$L/x_tiled"

# --- policy_fuzzer: text -------------------------------------------------
Q="$C/policy_fuzzer"
cp "$ROOT/service/policy/example.textproto" "$Q/example"
cat >"$Q/minimal" <<'POLICY'
clients {
  name: "all"
  match { any: true }
  usages: "*"
  heaps: "*"
  max_cpu_access: CPU_ACCESS_READ_WRITE
  attach_devices: "*"
  share_to: "@same_uid"
  receive_from: "@same_uid"
}
POLICY
cat >"$Q/exe_and_gids" <<'POLICY'
clients {
  name: "camera-hal"
  match { exe: "/usr/bin/camera-hal" gids: 44 }
  usages: "camera_output|cpu_write_often"
  usages: "0x10000000"
  heaps: "memfd"
  max_buffer_bytes: 33554432
  quota_buffers: 8
  max_cpu_access: CPU_ACCESS_READ_WRITE
  share_to: "viewer"
}
clients {
  name: "viewer"
  match { uids: [1000, 1001] }
  usages: "gpu_texture, cpu_read_rarely"
  heaps: "*"
  max_cpu_access: CPU_ACCESS_READ
  receive_from: "camera-hal"
}
POLICY
cat >"$Q/invalid" <<'POLICY'
clients { name: "Bad Name" match { exe: "relative/path" } usages: "gpu_texture|bogus" heaps: "nope" }
clients { name: "dup" match { uids: 1 } share_to: "ghost" }
clients { name: "dup" }
POLICY
printf 'clients { name: "x" match { any: true } \n  usages: "cpu_read_often" max_cpu_access: 7 }' >"$Q/syntax_error"

# --- metadata_fuzzer: SetMetadataRequest (buffer_id % 7 picks the buffer) -
M="$C/metadata_fuzzer"
meta() { enc SetMetadataRequest allocator.proto "$1"; }
meta 'buffer_id: 0 type: METADATA_CROP value { crop { left: 0 top: 0 right: 64 bottom: 48 } crop { left: 2 top: 2 right: 32 bottom: 24 } }' >"$M/crop_nv12"
meta 'buffer_id: 1 type: METADATA_CROP value { crop { left: 1 top: 1 right: 33 bottom: 17 } crop { right: 17 bottom: 9 } crop { left: 16 top: 8 right: 17 bottom: 9 } }' >"$M/crop_yuv420_odd"
meta 'buffer_id: 2 type: METADATA_CROP value { crop { left: 0 top: 0 right: 2 bottom: 1 } }' >"$M/crop_argb_outside"
meta 'buffer_id: 0 type: METADATA_DATASPACE value { dataspace: 142671872 }' >"$M/dataspace_bt709"
meta 'buffer_id: 2 type: METADATA_BLEND_MODE value { blend_mode: BLEND_MODE_PREMULTIPLIED }' >"$M/blend_premultiplied"
meta 'buffer_id: 3 type: METADATA_CROP value { crop { right: 1 bottom: 1 } }' >"$M/crop_blob"
meta 'buffer_id: 4 type: METADATA_DATASPACE value { dataspace: 1 }' >"$M/read_only_holder"
meta 'buffer_id: 0 type: METADATA_WIDTH value { dataspace: 1 }' >"$M/immutable_width"
meta 'buffer_id: 5 type: METADATA_BLEND_MODE value { blend_mode: BLEND_MODE_NONE }' >"$M/not_held"
meta 'buffer_id: 6 type: METADATA_CROP' >"$M/unknown_id"

for d in "$C"/*/; do printf '%s: %s seeds\n' "$(basename "$d")" "$(ls "$d" | wc -l)"; done
