#!/usr/bin/env python3
"""The summary of one `loadtest/bigrepo.sh` run (stdlib only).

    bigrepo_summary.py RESULTS_DIR

Reads what bigrepo.sh wrote in RESULTS_DIR (machine.json, bigrepo-SIZE.json,
index-fetch-SIZE.tsv, phases-SIZE.tsv, memory-SIZE.json, memory-samples-SIZE.json, runs/{hits,index}-SIZE-PHASE-rN.json,
helm-SIZE.jsonl), prints one block per size and writes RESULTS_DIR/summary.json.

Rounds of a phase: req/s, p50 and p99 are averaged; p99.9 and max are shown as the worst
round, with every round's value in brackets (a stall shows in one round, not in the mean).
Helm: the median of the repetitions.
"""

import glob
import json
import os
import re
import statistics as st
import sys


def load_json(path, default=None):
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return default


def tsv(path):
    try:
        with open(path) as f:
            rows = [line.rstrip("\n").split("\t") for line in f if line.strip()]
    except OSError:
        return []
    return [dict(zip(rows[0], r)) for r in rows[1:]] if rows else []


def ms(us):
    return f"{us / 1000:.2f} ms" if us < 100_000 else f"{us / 1e6:.2f} s"


def mib(kb):
    return f"{int(kb) / 1024:.0f} MiB"


def runs(out, kind, size):
    by_phase = {}
    for p in sorted(glob.glob(os.path.join(out, "runs", f"{kind}-{size}-*-r*.json"))):
        m = re.search(rf"{kind}-{re.escape(size)}-(\w+)-r(\d+)\.json$", p)
        r = load_json(p)
        if m and r:
            by_phase.setdefault(m.group(1), []).append(r)
    return by_phase


def phase_row(rs):
    lat = [r["latency_us"] for r in rs]
    return {
        "rounds": len(rs),
        "req_per_s": st.mean(r["req_per_s"] for r in rs),
        "p50_us": st.mean(x["p50"] for x in lat),
        "p99_us": st.mean(x["p99"] for x in lat),
        "p999_us_rounds": [x["p999"] for x in lat],
        "max_us_rounds": [x["max"] for x in lat],
        "p999_us": max(x["p999"] for x in lat),
        "max_us": max(x["max"] for x in lat),
        "requests": sum(r["requests"] for r in rs),
        "errors": sum(sum(v for v in r["errors"].values() if isinstance(v, int)) for r in rs),
        "missed_sends": sum(r.get("missed_sends", 0) for r in rs),
        "cpu_us_per_req": st.mean(r["target"]["cpu_us_per_req"] for r in rs) if all(r.get("target") for r in rs) else None,
    }


def main():
    out = sys.argv[1]
    machine = load_json(os.path.join(out, "machine.json"), {})
    summary = {"machine": machine, "sizes": {}}
    lines = [
        f"chartcache big-repository load test — commit {machine.get('git_commit')}, "
        f"{machine.get('nproc')} cores ({machine.get('cpu_model')}), kernel {machine.get('kernel')}, "
        f"load average at start {machine.get('loadavg_at_start')}",
        f"hits: the load set (small cached charts), open loop {machine.get('hit_rate'):.0f} req/s over "
        f"{machine.get('connections')} connections; index: GET /index.yaml (Helm UA) at "
        f"{machine.get('index_rate')} req/s; refresh: index republished every "
        f"{machine.get('republish_every_s')} s; {machine.get('rounds')} rounds × "
        f"{machine.get('duration_s'):.0f} s per phase, phases back to back",
    ]
    for size in machine.get("sizes", []):
        info = load_json(os.path.join(out, f"bigrepo-{size}.json"), {})
        s = {"repo": {k: v for k, v in info.items() if k != "newest"}}
        lines.append("")
        lines.append(
            f"== {size}: {info.get('versions', 0):,} versions of {info.get('charts')} charts, "
            f"index.yaml {info.get('index_bytes', 0) / 1e6:.1f} MB, as JSON "
            f"{(info.get('json_bytes') or 0) / 1e6:.1f} MB"
        )
        fetches = tsv(os.path.join(out, f"index-fetch-{size}.tsv"))
        s["index_fetches"] = fetches
        if fetches:
            cold = fetches[0]
            warm = [float(f["seconds"]) for f in fetches[1:]]
            lines.append(
                f"GET /index.yaml (curl): cold fill {float(cold['seconds']):.3f} s (status {cold['status']}, "
                f"{int(cold['bytes']) / 1e6:.1f} MB); warm (revalidated) "
                + "/".join(f"{w:.3f}" for w in warm) + " s"
            )
        hits = runs(out, "hits", size)
        index = runs(out, "index", size)
        s["hits"] = {p: phase_row(rs) for p, rs in hits.items()}
        s["index"] = {p: phase_row(rs) for p, rs in index.items()}
        phases = tsv(os.path.join(out, f"phases-{size}.tsv"))
        s["phases"] = phases
        lines.append("small-chart hits:")
        lines.append(f"  {'phase':<8} {'req/s':>7} {'p50':>9} {'p99':>9} {'p99.9 (rounds)':>26} {'max (rounds)':>28} {'errors':>6} {'missed':>6} {'CPU µs/req':>10}")
        for p in ("steady", "refresh"):
            r = s["hits"].get(p)
            if not r:
                continue
            p999 = f"{ms(r['p999_us'])} (" + "/".join(ms(x) for x in r["p999_us_rounds"]) + ")"
            mx = f"{ms(r['max_us'])} (" + "/".join(ms(x) for x in r["max_us_rounds"]) + ")"
            cpu = f"{r['cpu_us_per_req']:.1f}" if r["cpu_us_per_req"] is not None else "-"
            lines.append(f"  {p:<8} {r['req_per_s']:>7.0f} {ms(r['p50_us']):>9} {ms(r['p99_us']):>9} {p999:>26} {mx:>28} {r['errors']:>6} {r['missed_sends']:>6} {cpu:>10}")
        lines.append("index GETs (latency from the scheduled send):")
        for p in ("steady", "refresh"):
            r = s["index"].get(p)
            if not r:
                continue
            pub = sum(int(x["publishes"]) for x in phases if x["phase"] == p)
            refills = sum(int(x["index_refills"]) for x in phases if x["phase"] == p)
            lines.append(
                f"  {p:<8} {r['requests']:>4} responses, p50 {ms(r['p50_us'])}, p99 {ms(r['p99_us'])}, "
                f"max {ms(r['max_us'])}, errors {r['errors']}; publishes {pub}, new indexes fetched "
                f"by chartcache {refills}"
            )
        mem = load_json(os.path.join(out, f"memory-{size}.json"), {})
        s["memory"] = mem
        if mem:
            limit_kb = 64 * 1024 + 2 * mem["index_bytes"] / 1024
            lines.append(
                f"server memory: VmRSS after the cold fill {mib(mem['rss_kb_after_fill'])}, peak (VmHWM) "
                f"after the fill {mib(mem['hwm_kb_after_fill'])}, at the end {mib(mem['hwm_kb_end'])} "
                f"(issue 12's bound, 64 MiB + 2 × index: {mib(limit_kb)})"
            )
            samples = load_json(os.path.join(out, f"memory-samples-{size}.json"), {})
            s["memory_samples"] = samples
            if samples:
                lines.append(
                    f"  sampled every 50 ms, peaks: VmRSS {mib(samples['VmRSS_peak_kb'])}, RssAnon (heap) "
                    f"{mib(samples['RssAnon_peak_kb'])}, RssFile (mapped files: the cache) "
                    f"{mib(samples['RssFile_peak_kb'])}"
                )
            after = [f"{x['phase']} r{x['round']}: {mib(x['vmrss_kb'])}/{mib(x['vmhwm_kb'])}" for x in phases]
            if after:
                lines.append("  VmRSS/VmHWM after each phase: " + ", ".join(after))
        helm = []
        try:
            with open(os.path.join(out, f"helm-{size}.jsonl")) as f:
                helm = [json.loads(line) for line in f if line.strip()]
        except (OSError, ValueError):
            pass
        s["helm_runs"] = helm
        if helm:
            s["helm"] = {}
            lines.append(f"Helm v4 client (helm-sdkpy), median of {max(h['rep'] for h in helm)} fresh-home runs:")
            lines.append(f"  {'repository':<10} {'repo add':>9} {'repo update':>12} {'client peak RSS':>16}")
            for label in dict.fromkeys(h["label"] for h in helm):
                hs = [h for h in helm if h["label"] == label]
                row = {
                    "add_s": st.median(h["add_s"] for h in hs),
                    "update_s": st.median(h["update_s"] for h in hs),
                    "peak_rss_kb": st.median(h["peak_rss_kb"] for h in hs),
                    "add_s_runs": [h["add_s"] for h in hs],
                    "update_s_runs": [h["update_s"] for h in hs],
                }
                s["helm"][label] = row
                lines.append(f"  {label:<10} {row['add_s']:>8.2f}s {row['update_s']:>11.2f}s {mib(row['peak_rss_kb']):>16}")
            lines.append("  served = /index.yaml as chartcache serves it to Helm; yaml = the same file at "
                         "/yaml/index.yaml; json = the same document as compact JSON at /json/index.yaml; "
                         "nginx-* = those two files from nginx static")
        summary["sizes"][size] = s
    text = "\n".join(lines) + "\n"
    sys.stdout.write(text)
    with open(os.path.join(out, "summary.json"), "w") as f:
        json.dump(summary, f, indent=1)


if __name__ == "__main__":
    main()
