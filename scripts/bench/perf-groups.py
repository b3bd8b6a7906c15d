"""Groups `perf script` call-graph samples of keyturn by what it was doing (stdin), and
prints each group's CPU time per token signed. Used by scripts/bench/profile.sh.

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
FRAME = re.compile(r"^\s+[0-9a-f]+ (.+?)(\+0x[0-9a-f]+)? \((.*)\)$")


def samples(lines):
    stack = []
    for line in lines:
        if line.startswith((" ", "\t")):
            m = FRAME.match(line.rstrip())
            if m:
                # Kernel frames are marked, so that a sample's leaf tells where it ran.
                kernel = "[kernel" in m.group(3)
                stack.append(("[k] " if kernel else "") + m.group(1))
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
    p.add_argument("--what", required=True, help="the load, e.g. 'sign-batch ES256'")
    p.add_argument("--tokens-per-s", type=float, required=True)
    p.add_argument("--cpu-us-per-token", type=float, required=True)
    p.add_argument("--primitive-per-s", type=float, required=True)
    p.add_argument("--cpus", type=int, required=True)
    p.add_argument("--target", type=float, help="tokens/s as a multiple of the primitive")
    a = p.parse_args()
    counts = collections.Counter()
    in_kernel = 0  # samples outside the signature whose leaf is in the kernel
    for stack in samples(sys.stdin):
        name = group(stack)
        counts[name] += 1
        if name != GROUPS[0][0] and stack[0].startswith("[k] "):
            in_kernel += 1
    total = sum(counts.values())
    if total == 0:
        sys.exit("perf-groups.py: no samples (is perf allowed to sample the daemon?)")
    cpu = a.cpu_us_per_token
    prim_us = a.cpus / a.primitive_per_s * 1e6  # one thread's time per signature, all CPUs busy
    machine_us = a.cpus / a.tokens_per_s * 1e6  # every CPU's time per token
    print(f"{a.what}: {a.tokens_per_s:.0f} tokens/s, {cpu:.2f} us of keyturn CPU per token, "
          f"{machine_us:.2f} us of the {a.cpus} CPUs' time per token ({total} samples)")
    print()
    print(f"| {'where keyturn CPU goes':36} | {'us/token':>8} | {'share':>6} |")
    print(f"|{'-' * 38}|{'-' * 10}|{'-' * 8}|")
    order = [g for g, _ in GROUPS] + [OTHER]
    for name in order:
        n = counts.get(name, 0)
        print(f"| {name:36} | {cpu * n / total:8.2f} | {100 * n / total:5.1f}% |")
    sig = cpu * counts.get(GROUPS[0][0], 0) / total
    print()
    print(f"raw primitive, {a.cpus} threads: {a.primitive_per_s:.0f} signatures/s, {prim_us:.2f} us per signature per thread")
    print(f"the signature inside keyturn: {sig:.2f} us ({sig / prim_us:.2f}x the primitive's own); "
          f"all the rest: {machine_us - sig:.2f} us ({cpu - sig:.2f} in keyturn, {machine_us - cpu:.2f} wrk, kernel, idle)")
    kernel_us = cpu * in_kernel / total
    print(f"of keyturn's {cpu - sig:.2f} us beside the signature, {kernel_us:.2f} us ran in the kernel "
          f"(socket reads and writes, waking the reader, fdatasync of the audit log)")
    print(f"now: {a.tokens_per_s / a.primitive_per_s:.2f}x the primitive")
    if a.target:
        need = a.target * a.primitive_per_s
        budget = a.cpus / need * 1e6
        print(f"{a.target}x the primitive = {need:.0f} tokens/s = at most {budget:.2f} us of CPU time per token for "
              f"everything (signature, wrk, HTTP, JSON, policy, audit log): {budget - sig:.2f} us beside this signature")


if __name__ == "__main__":
    main()
