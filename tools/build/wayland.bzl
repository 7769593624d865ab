"""Wayland protocol code generation with Debian's wayland-scanner.

`wayland_client_protocol(name, xml)` runs wayland-scanner (from
@halloc_wayland_protocols, see //third_party:wayland.bzl) on one protocol
XML file and wraps the client header and glue code in a cc_library `name`:
`#include "<xml basename>-client-protocol.h"`.
"""

load("@rules_cc//cc:defs.bzl", "cc_library")

def wayland_client_protocol(name, xml, visibility = None):
    """Client code for one protocol: cc_library `name`.

    Args:
      name: the cc_library's name.
      xml: label of the protocol's XML file.
      visibility: the cc_library's visibility.
    """
    base = Label(xml).name.split("/")[-1][:-len(".xml")]
    header = base + "-client-protocol.h"
    code = base + "-protocol.c"
    # public-code, not private-code: private-code's symbols are hidden, and
    # Bazel links a test's libraries as shared objects in fastbuild.
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
