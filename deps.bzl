"""The external repositories halloc needs, for any workspace that builds it.

halloc's own WORKSPACE calls halloc_deps(), and so does a downstream
workspace that uses halloc (for HallocTest in its own tests, say):

    local_repository(name = "halloc", path = "/path/to/halloc")
    load("@halloc//:deps.bzl", "halloc_deps")
    halloc_deps()

Nothing is downloaded. The system libraries are Debian's -dev packages,
wrapped by pkg_config_repository under names prefixed `halloc_`, so they
cannot clash with the user's own repositories. Three repositories keep the
names that Bazel and rule sets look up (@rules_cc, @rules_java,
@remote_coverage_tools) and are declared only when the workspace has none of
its own, as is every other repository here: declare one before calling
halloc_deps() and halloc uses yours.
"""

load("//third_party:pkg_config.bzl", "pkg_config_repository")
load("//third_party:wayland.bzl", "wayland_protocols_repository")

def _maybe(repo_rule, name, **kwargs):
    if not native.existing_rule(name):
        repo_rule(name = name, **kwargs)

def _local_stand_in_impl(rctx):
    # The directory of `workspace_file`, wherever halloc is checked out:
    # a local_repository path would be relative to the user's workspace.
    src = rctx.path(rctx.attr.workspace_file).dirname
    for child in src.readdir():
        rctx.symlink(child, child.basename)

# A repository that is one of halloc's own directories (third_party/...).
_local_stand_in = repository_rule(
    implementation = _local_stand_in_impl,
    attrs = {
        "workspace_file": attr.label(
            mandatory = True,
            allow_single_file = True,
            doc = "The stand-in's WORKSPACE file; its directory is the repository.",
        ),
    },
    local = True,
)

_GTEST_EXTRA_BUILD = """
cc_library(
    name = "gtest_main",
    deps = [":gtest"],
    linkopts = ["-lgtest_main"],
)
"""

_WAYLAND_EXTRA_BUILD = """
cc_library(
    name = "wayland_server",
    linkopts = ["-lwayland-server"],
)
"""

def halloc_deps():
    """Declares every repository halloc's targets use (see the module doc)."""

    # Local stand-ins under their canonical names: @bazel_tools loads
    # @rules_cc (Debian's bazel-rules-cc is too new for Bazel 4.2.3), Bazel's
    # Java tools load @rules_java, and `bazel test` references
    # @remote_coverage_tools even when coverage is not collected.
    _maybe(
        _local_stand_in,
        name = "rules_cc",
        workspace_file = Label("//third_party/rules_cc:WORKSPACE"),
    )
    _maybe(
        native.local_repository,
        name = "rules_java",
        path = "/usr/share/bazel/rules/java",  # Debian's bazel-rules-java
    )
    _maybe(
        _local_stand_in,
        name = "remote_coverage_tools",
        workspace_file = Label("//third_party/remote_coverage_tools:WORKSPACE"),
    )

    # System libraries (Debian -dev packages, installed by tools/run setup).
    _maybe(
        pkg_config_repository,
        name = "halloc_grpc",
        modules = ["grpc++"],
        target = "grpc++",
    )
    _maybe(
        pkg_config_repository,
        name = "halloc_protobuf",
        modules = ["protobuf"],
        target = "protobuf",
    )
    _maybe(
        pkg_config_repository,
        name = "halloc_absl",
        modules = [
            "absl_status",
            "absl_statusor",
            "absl_strings",
            "absl_str_format",
            "absl_flags",
            "absl_flags_parse",
            "absl_flags_usage",
            "absl_synchronization",
            "absl_time",
            "absl_raw_hash_set",
            "absl_hash",
            "absl_random_random",
        ],
        target = "absl",
    )
    _maybe(
        pkg_config_repository,
        name = "halloc_gtest",
        extra_build = _GTEST_EXTRA_BUILD,
        modules = ["gtest", "gmock"],
        target = "gtest",
    )
    _maybe(
        pkg_config_repository,
        name = "halloc_libdrm",
        modules = ["libdrm"],
        target = "libdrm",
    )
    # PNG pictures (clients/compositor:png, the Wayland tests; libpng-dev).
    _maybe(
        pkg_config_repository,
        name = "halloc_libpng",
        modules = ["libpng"],
        target = "libpng",
    )
    _maybe(
        pkg_config_repository,
        name = "halloc_glog",
        modules = ["libglog"],
        target = "glog",
    )
    _maybe(
        pkg_config_repository,
        name = "halloc_benchmark",
        modules = ["benchmark"],
        target = "benchmark",
    )

    # sd_listen_fds / sd_notify for hallocd under systemd (libsystemd-dev).
    _maybe(
        pkg_config_repository,
        name = "halloc_libsystemd",
        modules = ["libsystemd"],
        target = "libsystemd",
    )

    # hallocd's optional /metrics HTTP endpoint (libmicrohttpd-dev).
    _maybe(
        pkg_config_repository,
        name = "halloc_libmicrohttpd",
        modules = ["libmicrohttpd"],
        target = "libmicrohttpd",
    )

    # clients/wayland: libwayland-client (libwayland-dev) and the protocol
    # XML (wayland-protocols) with wayland-scanner; its tests read weston's
    # screenshots with halloc_libpng (above).
    _maybe(
        pkg_config_repository,
        name = "halloc_wayland",
        modules = ["wayland-client"],
        target = "wayland",
        # Fake compositors in tests (same -dev package).
        extra_build = _WAYLAND_EXTRA_BUILD,
    )
    _maybe(
        wayland_protocols_repository,
        name = "halloc_wayland_protocols",
    )
