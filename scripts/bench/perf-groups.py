"""Groups `perf script` call-graph samples of keyturn by what it was doing (stdin), and
prints each group's CPU time per sign-batch token. Used by scripts/bench/profile.sh.

A sample belongs to the group of its innermost frame that names one (leaf to root), so
allocation or hashing done for the audit log counts as the audit log's.
"""

import argparse
import collections
import re
import sys

# (group, substrings of a frame's symbol), innermost match wins.
GROUPS = [
    ("signature: aws-lc-rs, in keyturn", ["SoftwareKey::sign"]),
    ("token: policy, jti, JSON, base64", ["policy::prepare", "policy::compact", "policy::new_jti"]),
    ("request JSON: parse items", ["http::api::parse"]),
    ("audit log: line, hash chain, write", ["keyturn::audit::"]),
    ("response JSON", ["write_json", "batch_response"]),
    ("metrics", ["keyturn::metrics::"]),
    ("sign handler: the rest (inlined)", ["sign_one", "sign_items", "sign_batch"]),
    ("HTTP: hyper, axum, socket I/O", ["hyper::", "axum::", "tower"]),
    ("runtime: tokio, threads", ["tokio::"]),
]
OTHER = "unattributed: stack not unwound"
FRAME = re.compile(r"^\s+[0-9a-f]+ (.+?)(\+0x[0-9a-f]+)? \(")


def samples(lines):
    stack = []
    for line in lines:
        if line.startswith((" ", "\t")):
            m = FRAME.match(line)
            if m:
                stack.append(m.group(1))
        elif not line.strip():
            if stack:
                yield stack
            stack = []
        else:
            stack = []
    if stack:
        yield stack


def group(stack):
    for frame in stack:
        for name, needles in GROUPS:
            if any(n in frame for n in needles):
                return name
    return OTHER


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--tokens-per-s", type=float, required=True)
    p.add_argument("--cpu-us-per-token", type=float, required=True)
    p.add_argument("--primitive-per-s", type=float, required=True)
    p.add_argument("--cpus", type=int, required=True)
    a = p.parse_args()
    counts = collections.Counter(group(s) for s in samples(sys.stdin))
    total = sum(counts.values())
    if total == 0:
        sys.exit("perf-groups.py: no samples (is perf allowed to sample the daemon?)")
    cpu = a.cpu_us_per_token
    prim_us = a.cpus / a.primitive_per_s * 1e6  # one thread's time per signature, all CPUs busy
    machine_us = a.cpus / a.tokens_per_s * 1e6  # every CPU's time per token
    print(f"sign-batch ES256: {a.tokens_per_s:.0f} tokens/s, {cpu:.2f} us of keyturn CPU per token, "
          f"{machine_us:.2f} us of the {a.cpus} CPUs' time per token ({total} samples)")
    print()
    print(f"| {'where keyturn CPU goes':36} | {'us/token':>8} | {'share':>6} |")
    print(f"|{'-' * 38}|{'-' * 10}|{'-' * 8}|")
    order = [g for g, _ in GROUPS] + [OTHER]
    for name in order:
        n = counts.get(name, 0)
        print(f"| {name:36} | {cpu * n / total:8.2f} | {100 * n / total:5.1f}% |")
    sig = cpu * counts.get(GROUPS[0][0], 0) / total
    need = 0.8 * a.primitive_per_s
    print()
    print(f"raw primitive, {a.cpus} threads: {a.primitive_per_s:.0f} signatures/s, {prim_us:.2f} us per signature per thread")
    print(f"the signature inside keyturn: {sig:.2f} us ({sig / prim_us:.2f}x the primitive's own)")
    print(f"0.8x the primitive = {need:.0f} tokens/s = at most {a.cpus / need * 1e6:.2f} us of CPU time per token "
          f"for everything: signature, wrk, HTTP, JSON, policy, audit log")
    print(f"left for all but the signature: {a.cpus / need * 1e6 - sig:.2f} us; "
          f"used now: {machine_us - sig:.2f} us ({cpu - sig:.2f} in keyturn, {machine_us - cpu:.2f} wrk, kernel, idle)")


if __name__ == "__main__":
    main()
