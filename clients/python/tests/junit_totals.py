"""Copies pytest's per-suite totals onto the report's <testsuites> element.

pytest writes a bare <testsuites>; gtest (and tools/run's count_cases, which
reads tests, failures and errors from <testsuites ...>) puts the totals
there.   junit_totals.py IN OUT
"""

import sys
import xml.etree.ElementTree as ET


def main(src, dst):
    tree = ET.parse(src)
    root = tree.getroot()
    suites = [root] if root.tag == "testsuite" else root.findall("testsuite")
    totals = {key: sum(int(s.get(key, 0)) for s in suites)
              for key in ("tests", "failures", "errors", "skipped")}
    out = ET.Element("testsuites", {k: str(v) for k, v in totals.items()})
    out.extend(suites)
    ET.ElementTree(out).write(dst, encoding="UTF-8", xml_declaration=True)


if __name__ == "__main__":
    main(*sys.argv[1:])
