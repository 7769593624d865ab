"""C++ (and gRPC) code generation with Debian's /usr/bin/protoc.

`halloc_cc_proto(name, srcs, deps, grpc)` runs protoc (and grpc_cpp_plugin
when `grpc = True`) in a genrule and wraps the result in a cc_library named
`name`. Import paths are relative to the package (`proto/`), so
`import "halloc/v1/types.proto";` and `#include "halloc/v1/types.pb.h"` work.
"""

load("@rules_cc//cc:defs.bzl", "cc_library")

def halloc_cc_proto(name, srcs, deps = [], grpc = False, visibility = None):
    pkg = native.package_name()
    stems = [s[:-len(".proto")] for s in srcs]
    hdrs = [s + ".pb.h" for s in stems]
    cc_srcs = [s + ".pb.cc" for s in stems]
    if grpc:
        hdrs += [s + ".grpc.pb.h" for s in stems]
        cc_srcs += [s + ".grpc.pb.cc" for s in stems]
    dep_protos = [d + "_srcs" for d in deps]
    native.filegroup(name = name + "_srcs", srcs = srcs + dep_protos, visibility = visibility)
    plugin = ""
    if grpc:
        plugin = "--grpc_out=$(GENDIR)/%s --plugin=protoc-gen-grpc=/usr/bin/grpc_cpp_plugin " % pkg
    native.genrule(
        name = name + "_gen",
        srcs = srcs + dep_protos,
        outs = hdrs + cc_srcs,
        cmd = ("/usr/bin/protoc --proto_path=%s --cpp_out=$(GENDIR)/%s " % (pkg, pkg) +
               plugin + " ".join(["$(location %s)" % s for s in srcs])),
    )
    cc_library(
        name = name,
        srcs = cc_srcs,
        hdrs = hdrs,
        includes = ["."],
        deps = deps + ["@halloc_protobuf//:protobuf"] + (["@halloc_grpc//:grpc++"] if grpc else []),
        visibility = visibility,
    )
