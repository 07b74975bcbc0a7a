#!/usr/bin/env python3
"""Renders gobench's herd, ctxcost and semantics JSON lines (stdin) as the
Markdown tables of docs/performance.md, "Go against its peers"."""
import json
import sys


def ms(x):
    return "%.1f" % x


def main():
    lines = [json.loads(l) for l in sys.stdin if l.startswith("{")]
    herds = {}
    for d in lines:
        if d["kind"] == "herd":
            herds.setdefault(d["sleep_ms"], []).append(d)
    for sleep, rows in sorted(herds.items()):
        print("%d goroutines released at once on one key, fn sleeps %d ms, %d repeats (rows interleaved):\n"
              % (rows[0]["callers"], sleep, rows[0]["reps"]))
        print("| row | executions, each repeat | last caller entered the call (ms after release) "
              "| median caller's result, ms over the sleep | last caller's result, ms over the sleep | CPU per caller (ns) |")
        print("|---|---|---:|---:|---:|---:|")
        for d in rows:
            cpu = d.get("cpu_per_caller_ns")
            print("| %s | %s | %s | %s | %s | %s |" % (
                d["label"], " ".join(str(e) for e in d["execs_by_rep"]), ms(d.get("last_enter_ms", -1)),
                ms(d["over_median_ms"]), ms(d["over_last_ms"]), "%.0f" % cpu if cpu else "-"))
        print()
        for d in lines:
            if d["kind"] == "herd-ratio" and d.get("sleep_ms", sleep) == sleep:
                print("- last caller's time over the sleep, %s ÷ %s, per repeat: median %.2f (%.2f-%.2f)"
                      % (d["contender"], d["against"], d["last_over_ratio_median"], min(d["ratios"]), max(d["ratios"])))
        print()
    costs = [d for d in lines if d["kind"] == "ctxcost"]
    if costs:
        ref = next((d for d in costs if d["contender"] == "xsync-dochan"), None)
        print("One goroutine, 1024 keys, trivial fn, %d calls x %d repeats (rows interleaved):\n"
              % (costs[0]["rounds"], costs[0]["reps"]))
        print("| row | ns/call | allocations/call | ns ÷ x/sync `DoChan` + select |")
        print("|---|---:|---:|---:|")
        for d in costs:
            ratio = "%.2f" % (d["ns_median"] / ref["ns_median"]) if ref else "-"
            print("| %s | %.0f | %.2g | %s |" % (d["label"], d["ns_median"], d["allocs_median"], ratio))
        for d in lines:
            if d["kind"] == "ctxcost-ratio":
                print("\nDoContext ÷ x/sync DoChan + select, per-repeat ratio: median %.2f (%.2f-%.2f)"
                      % (d["ns_ratio_median"], min(d["ratios"]), max(d["ratios"])))
        print()
    sems = [d for d in lines if d["kind"] == "semantics"]
    if sems:
        cols = [("alone", "a caller gives up alone (fn ignores its ctx for 200 ms)"),
                ("starter_leaves", "the starter gives up while another waits"),
                ("everyone_leaves", "every caller gives up"),
                ("new_caller", "a new caller while the abandoned fn stops (150 ms)"),
                ("panic", "fn panics, 2 callers wait"),
                ("goexit", "fn calls runtime.Goexit, 2 callers wait")]
        print("| row | " + " | ".join(c[1] for c in cols) + " |")
        print("|---" * (len(cols) + 1) + "|")
        for d in sems:
            print("| %s | %s |" % (d["label"], " | ".join(d[c[0]] for c in cols)))
        print()


if __name__ == "__main__":
    main()
