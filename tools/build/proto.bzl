"""C++ (and gRPC) code generation with Debian's /usr/bin/protoc.

`halloc_cc_proto(name, srcs, deps, grpc)` runs protoc (and grpc_cpp_plugin
when `grpc = True`) in a genrule and wraps the result in a cc_library named
`name`. Import paths are relative to the package (`proto/`), so
`import "halloc/v1/types.proto";` and `#include "halloc/v1/types.pb.h"` work.

Works in halloc's own workspace and when halloc is another workspace's
external repository: protoc's import root is the package's directory as the
execroot has it (`package_dir`), never a hardcoded `proto/`.
"""

load("@rules_cc//cc:defs.bzl", "cc_library")

def package_dir(label):
    """The execroot path of `label`'s package.

    "proto" for `//proto` in halloc's own workspace, "external/halloc/proto"
    when halloc is an external repository. Source files only; generated ones
    are under $(GENDIR) (or a rule's $(RULEDIR)) + the same path.

    Args:
      label: a Label, or a label string, resolved in halloc's repository.
    """
    label = Label(label) if type(label) == "string" else label
    return "/".join([p for p in [label.workspace_root, label.package] if p])

def halloc_cc_proto(name, srcs, deps = [], grpc = False, visibility = None):
    # The calling package, in whichever repository it is.
    pkg_dir = package_dir(Label("%s//%s:%s" % (
        native.repository_name(),
        native.package_name(),
        name,
    )))
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
        plugin = "--grpc_out=$(RULEDIR) --plugin=protoc-gen-grpc=/usr/bin/grpc_cpp_plugin "
    native.genrule(
        name = name + "_gen",
        srcs = srcs + dep_protos,
        outs = hdrs + cc_srcs,
        cmd = ("/usr/bin/protoc --proto_path=%s --cpp_out=$(RULEDIR) " % pkg_dir +
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
