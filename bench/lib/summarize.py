#!/usr/bin/env python3
"""bench/run's results: reads the raw files of one run (RES_DIR) and writes
OUT_DIR/STEM.json (the record), OUT_DIR/STEM.md (the table) and OUT_DIR/STEM.plot.dat
(for bench/lib/plot.gp). Standard library only.

usage: summarize.py RES_DIR OUT_DIR STEM
"""
import glob
import json
import os
import re
import statistics
import sys

RES, OUT, STEM = sys.argv[1:4]
run = json.load(open(os.path.join(RES, "run.json")))


def load(path, default=None):
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return default


def sim_delta(name):
    a = load(f"{RES}/{name}.sim.before.json", {}) or {}
    b = load(f"{RES}/{name}.sim.after.json", {}) or {}
    ca, cb = a.get("calls", {}), b.get("calls", {})
    ea, eb = a.get("errors", {}), b.get("errors", {})
    upstream = sum(cb.get(k, 0) - ca.get(k, 0) for k in ("domestic_daily", "overseas_daily"))
    return {
        "upstream_calls": upstream,
        "token_issuances": b.get("issuances", cb.get("tokenP", 0)) - a.get("issuances", ca.get("tokenP", 0)),
        "kis_errors": {k: eb.get(k, 0) - ea.get(k, 0) for k in set(ea) | set(eb) if eb.get(k, 0) - ea.get(k, 0)},
    }


METRIC = re.compile(r'^(\S+) (kisgw_[a-z_]+)(?:\{([^}]*)\})? ([0-9.eE+-]+)$')


def metrics(path):
    out = {}
    try:
        lines = open(path).read().splitlines()
    except OSError:
        return out
    for line in lines:
        m = METRIC.match(line)
        if not m:
            continue
        _, name, labels, value = m.groups()
        if name.endswith(("_bucket", "_sum", "_count")):
            continue
        out[(name, labels or "")] = out.get((name, labels or ""), 0) + float(value)
    return out


def cache_delta(name):
    a, b = metrics(f"{RES}/{name}.metrics.before.txt"), metrics(f"{RES}/{name}.metrics.after.txt")
    res = {}
    for (metric, labels), v in b.items():
        if metric != "kisgw_cache_results_total":
            continue
        m = re.search(r'result="([^"]+)"', labels)
        d = v - a.get((metric, labels), 0)
        if m and d:
            res[m.group(1)] = res.get(m.group(1), 0) + int(d)
    return res


def rss(name):
    r = load(f"{RES}/{name}.rss.json", {}) or {}
    return {k: round(v / 1024, 1) for k, v in r.items()}


def wrk_record(name):
    w = load(f"{RES}/{name}.wrk.json")
    meta = load(f"{RES}/{name}.meta.json", {})
    if not w:
        return None
    dur = w["duration_us"] / 1e6
    lat = w["latency_us"]
    e = w["errors"]
    rec = dict(meta)
    rec.update({
        "requests": w["requests"], "duration_s": round(dur, 2),
        "rps": round(w["requests"] / dur, 1),
        "latency_ms": {k: round(lat[k] / 1000, 3) for k in ("p50", "p90", "p99", "p999", "max")},
        "errors": {"non_2xx_3xx": e["status"], "socket": e["connect"] + e["read"] + e["write"] + e["timeout"]},
        "load_before": _read(f"{RES}/{name}.load.before"),
    })
    if w.get("statuses"):
        rec["statuses"] = w["statuses"]
    if w.get("xcache"):
        rec["x_cache"] = w["xcache"]
    rec.update(sim_delta(name))
    rec["upstream_per_request"] = round(rec["upstream_calls"] / w["requests"], 4) if w["requests"] else None
    c = cache_delta(name)
    if c:
        rec["cache_results"] = c
    rec["peak_rss_mib"] = rss(name)
    return rec


def _read(path):
    try:
        return open(path).read().strip()
    except OSError:
        return None


def percentile(sorted_vals, p):
    if not sorted_vals:
        return None
    k = (len(sorted_vals) - 1) * p / 100
    lo = int(k)
    hi = min(lo + 1, len(sorted_vals) - 1)
    return sorted_vals[lo] + (sorted_vals[hi] - sorted_vals[lo]) * (k - lo)


def h2_record(name):
    meta = load(f"{RES}/{name}.meta.json")
    if not meta:
        return None
    entries = []
    try:
        for line in open(f"{RES}/{name}.h2log"):
            parts = line.split("\t")
            if len(parts) < 3:
                continue
            entries.append((int(parts[0]), parts[1].strip(), int(parts[2]) / 1000))
    except OSError:
        pass
    # Runs with "warmup_s" (clients started 1 ms apart, bench/run) log their warm-up too: drop the
    # requests sent in its first seconds, and count the rate over what is left.
    span_s = meta["duration_s"]
    warmup_us = meta.get("warmup_s", 0) * 1_000_000
    if warmup_us and entries:
        entries.sort()
        start = entries[0][0] + warmup_us
        entries = [e for e in entries if e[0] >= start]
        if len(entries) > 1:
            span_s = (entries[-1][0] - entries[0][0]) / 1e6
    bad = sum(1 for e in entries if e[1] != "200")
    durs = sorted(e[2] for e in entries)
    txt = _read(f"{RES}/{name}.h2load.txt") or ""
    m = re.search(r"requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, (\d+) failed, (\d+) errored, (\d+) timeout", txt)
    rec = dict(meta)
    rec.update({
        "requests": len(durs),
        "achieved_rps": round(len(durs) / span_s, 1),
        "latency_ms": {k: (round(percentile(durs, p), 3) if durs else None)
                       for k, p in (("p50", 50), ("p90", 90), ("p99", 99), ("p999", 99.9))},
        "errors": {"non_200": bad, "failed": int(m.group(5)) if m else None,
                   "errored": int(m.group(6)) if m else None, "timeout": int(m.group(7)) if m else None},
        "load_before": _read(f"{RES}/{name}.load.before"),
    })
    rec["latency_ms"]["max"] = round(durs[-1], 3) if durs else None
    rec.update(sim_delta(name))
    rec["peak_rss_mib"] = rss(name)
    return rec


def median_record(recs):
    """The median of interleaved rounds, metric by metric."""
    m = dict(recs[0])
    m["name"] = recs[0]["name"].rsplit(".r", 1)[0]
    m["rounds"] = len(recs)
    m["rps"] = round(statistics.median(r["rps"] for r in recs), 1)
    m["rps_rounds"] = [r["rps"] for r in recs]
    m["latency_ms"] = {k: round(statistics.median(r["latency_ms"][k] for r in recs), 3) for k in recs[0]["latency_ms"]}
    m["requests"] = sum(r["requests"] for r in recs)
    m["errors"] = {k: sum(r["errors"][k] for r in recs) for k in recs[0]["errors"]}
    m["upstream_calls"] = sum(r["upstream_calls"] for r in recs)
    m["token_issuances"] = sum(r["token_issuances"] for r in recs)
    m["upstream_per_request"] = round(m["upstream_calls"] / m["requests"], 4) if m["requests"] else None
    kis = {}
    for r in recs:
        for k, v in r.get("kis_errors", {}).items():
            kis[k] = kis.get(k, 0) + v
    m["kis_errors"] = kis
    c = {}
    for r in recs:
        for k, v in r.get("cache_results", {}).items():
            c[k] = c.get(k, 0) + v
    if c:
        m["cache_results"] = c
    m["peak_rss_mib"] = recs[-1]["peak_rss_mib"]
    m["load_before"] = [r["load_before"] for r in recs]
    return m


def miss_record():
    rows = []
    try:
        for line in open(f"{RES}/miss.curl.txt"):
            parts = line.split(" ", 3)
            if len(parts) < 2:
                continue
            code, total = parts[0], float(parts[1]) * 1000
            xc = parts[2] if len(parts) > 2 else ""
            st = parts[3] if len(parts) > 3 else ""
            um = re.search(r"upstream;dur=([0-9.]+)", st)
            rows.append((code, total, xc, float(um.group(1)) if um else None))
    except OSError:
        return None
    if not rows:
        return None
    ok = [r for r in rows if r[0] == "200"]
    totals = sorted(r[1] for r in ok)
    over_sim = sorted(r[1] - run["sim"]["latency_ms"] for r in ok)
    over_up = sorted(r[1] - r[3] for r in ok if r[3] is not None)
    rec = {"name": "miss", "kind": "miss", "target": "kisgw",
           "tool": "curl, 30 sequential cold single-page requests, 120 ms apart",
           "requests": len(rows), "non_200": len(rows) - len(ok),
           "x_cache": {x: sum(1 for r in rows if r[2] == x) for x in {r[2] for r in rows}},
           "latency_ms": {"p50": round(percentile(totals, 50), 3) if totals else None,
                          "p90": round(percentile(totals, 90), 3) if totals else None,
                          "max": round(totals[-1], 3) if totals else None},
           "over_sim_latency_ms": {"p50": round(percentile(over_sim, 50), 3) if over_sim else None,
                                   "max": round(over_sim[-1], 3) if over_sim else None},
           "over_upstream_dur_ms": {"p50": round(percentile(over_up, 50), 3) if over_up else None,
                                    "max": round(over_up[-1], 3) if over_up else None}}
    def kis_calls(path):
        out = []
        try:
            for line in open(path):
                parts = line.split()
                if len(parts) >= 2 and parts[0] == "200":
                    out.append(float(parts[1]) * 1000)
        except OSError:
            pass
        return sorted(out)
    direct = kis_calls(f"{RES}/miss.direct.txt")
    via_nginx = kis_calls(f"{RES}/miss.nginx.txt")
    rec["upstream_direct_ms"] = {"p50": round(percentile(direct, 50), 3) if direct else None,
                                 "max": round(direct[-1], 3) if direct else None, "requests": len(direct)}
    rec["over_upstream_direct_ms"] = {
        "p50": round(percentile(totals, 50) - percentile(direct, 50), 3) if direct and totals else None}
    # The same KIS call through a plain nginx reverse proxy: what one proxy hop costs here.
    rec["upstream_via_nginx_proxy_ms"] = {"p50": round(percentile(via_nginx, 50), 3) if via_nginx else None,
                                          "requests": len(via_nginx)}
    rec["nginx_proxy_over_upstream_direct_ms"] = {
        "p50": round(percentile(via_nginx, 50) - percentile(direct, 50), 3) if direct and via_nginx else None}
    rec.update(sim_delta("miss"))
    # The direct calls are KIS calls too; they are not the gateway's.
    rec["upstream_calls"] = rec["upstream_calls"] - len(direct) - len(via_nginx)
    rec["upstream_per_request"] = round(rec["upstream_calls"] / len(rows), 3)
    return rec


def redis_record(fname, label):
    path = f"{RES}/{fname}"
    try:
        lines = [l for l in open(path).read().splitlines() if l.strip()]
    except OSError:
        return None
    if len(lines) < 2:
        return None
    head = [h.strip('"') for h in lines[0].split(",")]
    vals = [v.strip('"') for v in lines[-1].split(",")]
    d = dict(zip(head, vals))
    try:
        return {"name": label, "kind": "anchor_redis", "target": "redis-benchmark",
                "tool": f"redis-benchmark -t get -d {run['body_bytes']} -c {run['connections']}" + (" -P 16" if "p16" in fname else ""),
                "rps": float(d["rps"]),
                "latency_ms": {"p50": float(d.get("p50_latency_ms", "nan")), "p95": float(d.get("p95_latency_ms", "nan")),
                               "p99": float(d.get("p99_latency_ms", "nan")), "max": float(d.get("max_latency_ms", "nan"))}}
    except (KeyError, ValueError):
        return None


# ------------------------------------------------------------------ collect
names = sorted({os.path.basename(p)[:-len(".meta.json")] for p in glob.glob(f"{RES}/*.meta.json")})
records = {}
for n in names:
    meta = load(f"{RES}/{n}.meta.json", {})
    r = h2_record(n) if meta.get("kind") == "fixed_rate" else wrk_record(n)
    if r:
        records[n] = r

scen = {}
for base in ("hit", "nginx_proxy_cache", "nginx_static"):
    rounds = [records[n] for n in sorted(records) if n.startswith(base + ".r")]
    if rounds:
        scen[base] = median_record(rounds)
for n in ("preflight", "nginx_preflight", "reject", "nginx_reject", "mixed.cold", "mixed.warm",
          "fleet.hit", "fleet.mixed", "fleet_haproxy.hit"):
    if n in records:
        scen[n] = records[n]
miss = miss_record()
rates = {n: r for n, r in records.items() if r.get("kind") == "fixed_rate"}
# Rounds of one fixed rate (rate.<target>.<pct>.r<k>, interleaved by bench/run): one record with each figure's
# median over the rounds that measured it, and every round's p99 (None for a round with no h2load log).
def round_number(name):
    return int(name.rsplit(".r", 1)[1])


for base in sorted({n.rsplit(".r", 1)[0] for n in rates if re.search(r"\.r\d+$", n)}):
    names = sorted((n for n in rates if n.rsplit(".r", 1)[0] == base and re.search(r"\.r\d+$", n)), key=round_number)
    rounds = [rates.pop(n) for n in names]
    measured = [r for r in rounds if r["requests"]]
    m = dict(rounds[0])
    m["name"], m["rounds"], m["rounds_measured"] = base, len(rounds), len(measured)
    m["requests"] = sum(r["requests"] for r in rounds)
    m["achieved_rps"] = round(statistics.median(r["achieved_rps"] for r in measured), 1) if measured else 0
    m["latency_ms"] = {k: (round(statistics.median(v), 3) if (v := [r["latency_ms"][k] for r in measured
                                                                      if r["latency_ms"][k] is not None]) else None)
                       for k in rounds[0]["latency_ms"]}
    m["p99_rounds_ms"] = [r["latency_ms"]["p99"] for r in rounds]
    m["errors"] = {k: sum(r["errors"][k] or 0 for r in rounds) for k in rounds[0]["errors"]}
    m["load_before"] = [r.get("load_before") for r in rounds]
    rates[base] = m
redis = [x for x in (redis_record("redis.get.csv", "redis GET"), redis_record("redis.get_p16.csv", "redis GET -P 16")) if x]


def ratio(a, b):
    return round(a / b, 3) if a and b else None


anchors = {"hit": "nginx_proxy_cache", "preflight": "nginx_preflight", "reject": "nginx_reject",
           "fleet.hit": "nginx_proxy_cache", "fleet_haproxy.hit": "nginx_proxy_cache"}
for n, a in anchors.items():
    if n in scen and a in scen:
        scen[n]["anchor"] = a
        scen[n]["ratio_rps"] = ratio(scen[n]["rps"], scen[a]["rps"])
        scen[n]["ratio_p99"] = ratio(scen[n]["latency_ms"]["p99"], scen[a]["latency_ms"]["p99"])
if "hit" in scen and "nginx_static" in scen:
    scen["hit"]["ratio_rps_static"] = ratio(scen["hit"]["rps"], scen["nginx_static"]["rps"])
for n, r in rates.items():
    if n.startswith("rate.kisgw."):
        a = "rate.nginx_at_kisgw." + n.rsplit(".", 1)[1]
        if a in rates:
            r["anchor"] = a
            r["ratio_p99"] = ratio(r["latency_ms"]["p99"], rates[a]["latency_ms"]["p99"])

final_sim = load(f"{RES}/final.sim.json", {}) or {}
final_rss = {k: round(v / 1024, 1) for k, v in (load(f"{RES}/final.rss.json", {}) or {}).items()}

# targets of the gateway issue (Performance)
targets = {}
if "hit" in scen:
    h = scen["hit"]
    # Varnish is not installed here: the issue measured it at 74k against nginx proxy_cache's 106k on the same
    # machine, i.e. 0.70x; compare ratios, since absolute figures move with the machine.
    targets["hit_ratio_vs_varnish_ratio_0.70"] = {"ratio": h.get("ratio_rps"), "target": round(74 / 106, 2),
                                                  "met": (h.get("ratio_rps") or 0) >= 74 / 106,
                                                  "note": "Varnish/nginx proxy_cache = 74k/106k in the issue's measurement"}
    targets["hit_rps_vs_nginx_proxy_cache_same_run"] = {"ratio": h.get("ratio_rps"), "goal": 1.0,
                                                       "met": (h.get("ratio_rps") or 0) >= 1.0}
r50 = rates.get("rate.kisgw.50")
if r50:
    targets["p99_at_half_max_under_2ms"] = {"p99_ms": r50["latency_ms"]["p99"], "achieved_rps": r50["achieved_rps"],
                                            "offered_rps": r50["offered_rps"],
                                            "p99_rounds_ms": r50.get("p99_rounds_ms"),
                                            "met": r50["latency_ms"]["p99"] is not None and r50["latency_ms"]["p99"] < 2
                                                   and r50.get("rounds_measured", 1) * 2 > r50.get("rounds", 1)}
if miss:
    over = miss["over_upstream_direct_ms"]["p50"]
    targets["miss_within_upstream_plus_1ms"] = {"p50_over_upstream_direct_ms": over,
                                                "p50_over_sim_latency_ms": miss["over_sim_latency_ms"]["p50"],
                                                "p50_over_upstream_dur_ms": miss["over_upstream_dur_ms"]["p50"],
                                                "nginx_proxy_p50_over_upstream_direct_ms":
                                                    miss["nginx_proxy_over_upstream_direct_ms"]["p50"],
                                                "met": over is not None and over <= 1}
fleet_201 = sum(scen[n].get("kis_errors", {}).get("EGW00201", 0) for n in scen if n.startswith("fleet"))
targets["fleet_zero_EGW00201"] = {"EGW00201": fleet_201, "met": fleet_201 == 0}
targets["run_zero_EGW00201"] = {"EGW00201": final_sim.get("errors", {}).get("EGW00201", 0),
                                "met": final_sim.get("errors", {}).get("EGW00201", 0) == 0}

result = {"run": run, "scenarios": scen, "miss": miss, "fixed_rate": rates, "redis_benchmark": redis,
          "totals": {"sim": final_sim, "peak_rss_mib": final_rss}, "targets": targets}
with open(os.path.join(OUT, STEM + ".json"), "w") as f:
    json.dump(result, f, indent=1, sort_keys=False)
    f.write("\n")

# ------------------------------------------------------------------ markdown
def f(x, nd=2):
    if x is None:
        return "—"
    if isinstance(x, float) and x != x:
        return "—"
    return f"{x:,.{nd}f}" if isinstance(x, float) else f"{x:,}"


def rss_s(r):
    p = r.get("peak_rss_mib") or {}
    return " / ".join(f"{p[k]:.0f}" for k in ("gw1", "gw2") if k in p) if p else "—"


def errs(r):
    e = r.get("errors", {})
    if r.get("kind") in ("reject", "anchor_reject") and e.get("non_2xx_3xx") == r.get("requests") and not e.get("socket"):
        return "0 (every answer a 401, as meant)"
    parts = []
    if e.get("non_2xx_3xx"):
        parts.append(f"{e['non_2xx_3xx']:,} non-2xx")
    if e.get("socket"):
        parts.append(f"{e['socket']:,} socket")
    if e.get("non_200"):
        parts.append(f"{e['non_200']:,} non-200")
    for k in ("failed", "errored", "timeout"):
        if e.get(k):
            parts.append(f"{e[k]:,} {k}")
    return ", ".join(parts) or "0"


labels = {
    "hit": "**hit** (JWT + KIS token + CORS)", "nginx_proxy_cache": "nginx proxy_cache hit",
    "nginx_static": "nginx static file", "preflight": "**preflight** (CORS OPTIONS)",
    "nginx_preflight": "nginx preflight (return 204)", "reject": "**reject** (bad JWT signature → 401)",
    "nginx_reject": "nginx return 401", "mixed.cold": "**mixed**, cold (Zipf 2,000 symbols × 5 ranges, 4 users)",
    "mixed.warm": "**mixed**, second pass", "fleet.hit": "**fleet hit**: nginx LB + 2 gateways",
    "fleet.mixed": "**fleet mixed** (cold ranges): nginx LB + 2 gateways", "fleet_haproxy.hit": "**fleet hit**: HAProxy + 2 gateways",
}
L = []
L.append(f"# kisgw bench — {run['date']} — {run['machine']}")
L.append("")
L.append(f"Machine: {run['nproc']} cores, {run['cpu_model']}, {run['mem_gib']} GiB, Linux {run['kernel']}. "
         f"kisgw {run['git']} ({run['binary']}); {run['quiet']}; {run.get('tokens', '')}.")
L.append(f"Load: wrk -t1 -c{run['connections']}, {run['duration_s']} s per scenario, hit and its anchors in "
         f"{run['rounds']} interleaved rounds (medians). Hot response {run['body_bytes']:,} bytes of JSON. "
         f"Simulator: live, {run['sim']['latency_ms']} ms latency, {run['sim']['rate_per_s']}/s per app key; "
         f"{run['users']} users ({run.get('tokens', '')}). Versions: {run['versions']}.")
L.append("")
L.append("| scenario | req/s | p50 ms | p90 ms | p99 ms | max ms | errors | upstream calls / req | token issuances | peak RSS MiB (gw1 / gw2) | vs anchor (req/s, p99) |")
L.append("|---|---:|---:|---:|---:|---:|---|---:|---:|---:|---|")
for n in ("hit", "nginx_proxy_cache", "nginx_static", "preflight", "nginx_preflight", "reject", "nginx_reject",
          "mixed.cold", "mixed.warm", "fleet.hit", "fleet.mixed", "fleet_haproxy.hit"):
    if n not in scen:
        continue
    r = scen[n]
    lat = r["latency_ms"]
    anchor = "anchor" if r.get("kind", "").startswith("anchor") else "—"
    if r.get("ratio_rps") is not None:
        anchor = f"{r['ratio_rps']:.2f}× / {r['ratio_p99']:.2f}× {r['anchor'].replace('_', ' ')}" if r.get("ratio_p99") else f"{r['ratio_rps']:.2f}×"
        if n == "hit" and r.get("ratio_rps_static"):
            anchor += f"; {r['ratio_rps_static']:.2f}× static"
    is_kisgw = not r.get("kind", "").startswith("anchor")
    L.append(f"| {labels.get(n, n)} | {f(r['rps'], 0)} | {f(lat['p50'])} | {f(lat['p90'])} | {f(lat['p99'])} | {f(lat['max'])} | "
             f"{errs(r)} | {f(r['upstream_per_request'], 4) if is_kisgw else '—'} | {r['token_issuances'] if is_kisgw else '—'} | "
             f"{rss_s(r) if is_kisgw else '—'} | {anchor} |")
L.append("")
for n in ("mixed.cold", "mixed.warm", "fleet.mixed"):
    if n in scen:
        r = scen[n]
        L.append(f"- {labels[n]}: statuses {r.get('statuses', {})}, X-Cache {r.get('x_cache', {})}, "
                 f"gateway cache results {r.get('cache_results', {})}, KIS calls {r['upstream_calls']:,}, "
                 f"KIS errors {r.get('kis_errors') or 'none'}.")
if "hit" in scen:
    L.append(f"- hit rounds req/s: kisgw {scen['hit'].get('rps_rounds')}, nginx proxy_cache {scen.get('nginx_proxy_cache', {}).get('rps_rounds')}, "
             f"nginx static {scen.get('nginx_static', {}).get('rps_rounds')}.")
if miss:
    L.append(f"- **miss** (one cold single-page range at a time): total p50 {f(miss['latency_ms']['p50'])} ms, max {f(miss['latency_ms']['max'])} ms; "
             f"above the simulator's {run['sim']['latency_ms']} ms: p50 {f(miss['over_sim_latency_ms']['p50'])} ms; above the gateway's own "
             f"`Server-Timing: upstream;dur`: p50 {f(miss['over_upstream_dur_ms']['p50'])} ms, max {f(miss['over_upstream_dur_ms']['max'])} ms; "
             f"the same page asked of the simulator directly (curl, interleaved): p50 {f(miss['upstream_direct_ms']['p50'])} ms, "
             f"so a miss costs p50 **{f(miss['over_upstream_direct_ms']['p50'])} ms** over the upstream's own latency "
             f"(the same call through a plain nginx reverse proxy: p50 {f(miss['upstream_via_nginx_proxy_ms']['p50'])} ms, "
             f"{f(miss['nginx_proxy_over_upstream_direct_ms']['p50'])} ms over direct); "
             f"{miss['upstream_per_request']} KIS calls per request, X-Cache {miss['x_cache']}, non-200 {miss['non_200']}.")
L.append("")
L.append("Fixed rate (open loop, `h2load --h1 -c{0} --rps`, clients started 1 ms apart so their sends are spread over the period, the first second dropped): latency from each request's send; a rate the target cannot keep shows as achieved < offered.".format(run["connections"]))
L.append("")
L.append("| target | offered req/s | achieved req/s | p50 ms | p90 ms | p99 ms | p99.9 ms | max ms | errors | p99 vs nginx at the same rate |")
L.append("|---|---:|---:|---:|---:|---:|---:|---:|---|---:|")
for n in sorted(rates, key=lambda k: (not k.startswith("rate.kisgw"), rates[k]["target"], rates[k]["offered_rps"])):
    r = rates[n]
    lat = r["latency_ms"]
    L.append(f"| {r['target']} | {r['offered_rps']:,} | {f(r['achieved_rps'], 0)} | {f(lat['p50'])} | {f(lat['p90'])} | {f(lat['p99'])} | "
             f"{f(lat['p999'])} | {f(lat['max'])} | {errs(r)} | {f(r.get('ratio_p99'))}{'×' if r.get('ratio_p99') else ''} |")
rounded = [n for n in rates if rates[n].get("rounds")]
if rounded:
    L.append("")
    L.append("At half the kisgw maximum the rows are medians of " + str(rates[rounded[0]]["rounds"])
             + " interleaved rounds, figure by figure; each round's p99 (ms): "
             + "; ".join(f"{rates[n]['target']} " + " / ".join(f(x) for x in rates[n]["p99_rounds_ms"])
                         for n in sorted(rounded)) + ".")
L.append("")
if redis:
    L.append("Redis (`redis-benchmark`, the anchor for the Redis client):")
    L.append("")
    L.append("| test | req/s | p50 ms | p95 ms | p99 ms | max ms |")
    L.append("|---|---:|---:|---:|---:|---:|")
    for r in redis:
        lat = r["latency_ms"]
        L.append(f"| `{r['tool']}` | {f(r['rps'], 0)} | {f(lat['p50'], 3)} | {f(lat['p95'], 3)} | {f(lat['p99'], 3)} | {f(lat['max'], 3)} |")
    L.append("")
calls = final_sim.get("calls", {})
L.append(f"Whole run: KIS calls {calls}, KIS errors {final_sim.get('errors', {})}, token issuances {final_sim.get('issuances')}; "
         f"peak RSS (VmHWM, MiB): {final_rss}.")
L.append("")
L.append("Targets (issue 4, Performance):")
L.append("")
for k, v in targets.items():
    L.append(f"- {k}: {'**met**' if v.get('met') else '**not met**'} — " + ", ".join(f"{a}={b}" for a, b in v.items() if a != "met"))
L.append("")
with open(os.path.join(OUT, STEM + ".md"), "w") as fh:
    fh.write("\n".join(L))

# ------------------------------------------------------------------ plot data
def block(prefixes):
    rows = sorted((r["offered_rps"], r["latency_ms"]["p50"], r["latency_ms"]["p90"], r["latency_ms"]["p99"], r["achieved_rps"])
                  for n, r in rates.items() if any(n.startswith(p) for p in prefixes) and r["latency_ms"]["p50"] is not None)
    return "\n".join(" ".join(str(x) for x in row) for row in rows)


with open(os.path.join(OUT, STEM + ".plot.dat"), "w") as fh:
    fh.write("# offered p50_ms p90_ms p99_ms achieved\n# kisgw\n")
    fh.write(block(["rate.kisgw."]) + "\n\n\n# nginx proxy_cache\n")
    fh.write(block(["rate.nginx_at_kisgw.", "rate.nginx."]) + "\n")
print(f"summarize: wrote {OUT}/{STEM}.json and .md")
