"""Wayland protocol code generation with Debian's wayland-scanner.

`wayland_client_protocol(name, xml)` runs wayland-scanner (from
@halloc_wayland_protocols, see //third_party:wayland.bzl) on one protocol
XML file and wraps the client header and glue code in a cc_library `name`:
`#include "<xml basename>-client-protocol.h"`.
"""

load("@rules_cc//cc:defs.bzl", "cc_library")

def wayland_client_protocol(name, xml, server_header = None, visibility = None):
    """Client code for one protocol: cc_library `name`.

    Args:
      name: the cc_library's name.
      xml: label of the protocol's XML file.
      server_header: if given, also a testonly cc_library of this name with
        the server header (`<base>-server-protocol.h`), for fake
        compositors in tests; the glue code is `name`'s (it is the same for
        both sides).
      visibility: the cc_libraries' visibility.
    """
    base = Label(xml).name.split("/")[-1][:-len(".xml")]
    header = base + "-client-protocol.h"
    code = base + "-protocol.c"
    # public-code, not private-code: private-code's symbols are hidden, and
    # Bazel links a test's libraries as shared objects (cc_test's default).
    scanner = "@halloc_wayland_protocols//:wayland-scanner"
    native.genrule(
        name = name + "_scan",
        srcs = [xml],
        outs = [header, code],
        cmd = ("$(location {s}) client-header $< $(location {h}) && " +
               "$(location {s}) public-code $< $(location {c})").format(
            s = scanner,
            h = header,
            c = code,
        ),
        tools = [scanner],
    )
    cc_library(
        name = name,
        srcs = [code],
        hdrs = [header],
        # `#include "<base>-client-protocol.h"`, as wayland-scanner's
        # generated code and every Wayland client spell it.
        includes = ["."],
        # The generated header includes <wayland-client.h>.
        deps = ["@halloc_wayland//:wayland"],
        visibility = visibility,
    )
    if server_header:
        server_h = base + "-server-protocol.h"
        native.genrule(
            name = server_header + "_scan",
            srcs = [xml],
            outs = [server_h],
            cmd = "$(location {s}) server-header $< $@".format(s = scanner),
            tools = [scanner],
            testonly = True,
        )
        cc_library(
            name = server_header,
            hdrs = [server_h],
            includes = ["."],
            testonly = True,
            deps = [":" + name, "@halloc_wayland//:wayland_server"],
            visibility = visibility,
        )
