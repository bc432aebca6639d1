"""Per-class pass/fail/skip counts (failures, skips with reasons) from a pytest junit XML file (see README.md)."""

import sys
import xml.etree.ElementTree as ET
from collections import defaultdict

path = sys.argv[1] if len(sys.argv) > 1 else sys.exit("usage: summarize.py RESULTS.xml")
counts = defaultdict(lambda: defaultdict(int))
details = []
for case in ET.parse(path).getroot().iter("testcase"):
    cls = case.get("classname").rsplit(".", 1)[-1]
    name = case.get("name")
    outcome, reason = "passed", ""
    for tag in ("failure", "error", "skipped"):
        node = case.find(tag)
        if node is not None:
            outcome = {"failure": "failed", "error": "error"}.get(tag, "skipped")
            reason = (node.get("message") or "").splitlines()[0][:200] if node.get("message") else ""
            break
    counts[cls][outcome] += 1
    if outcome != "passed":
        details.append(f"  {outcome:7} {cls}::{name}: {reason}")
for cls, c in counts.items():
    print(f"{cls}: " + ", ".join(f"{k} {v}" for k, v in sorted(c.items())))
print("\n".join(sorted(details)))
