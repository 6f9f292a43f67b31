#!/usr/bin/env python3
"""Turn the raw outputs of bench/run.sh into the table, the checks, results.json and chart.svg.

Reads OUT/rows.tsv (one line per row: id, target, the row's wrk output files comma-separated (one
per round) or "-", peak RSS in kB or "-", connections, note, extras as k=v;k=v) and OUT/meta.tsv
(key, value); parses wrk's --latency output. A row's figures are over its rounds: the median of
requests/s, p50 and p99, the spread of requests/s (min-max, and half of it as +-% of the median),
errors and requests summed. Every ratio and target is judged on medians. The idle rows (no wrk
runs; RSS before and while holding IDLE_CONNS idle connections, a fresh server in each of ROUNDS
interleaved rounds, medians and the spread) get a table of their own.
Writes OUT/results.json, OUT/table.md and OUT/chart.svg; prints the table and the checks.
Exit 1 with --strict when a check is MISS. No dependencies beyond the standard library.
"""

import json
import re
import statistics
import sys
import textwrap
from pathlib import Path
from xml.sax.saxutils import escape

UNIT_MS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60000.0, "h": 3600000.0}
MIB = 1024  # kB per MiB


def parse_wrk(text):
    """Requests/s, p50/p99 (ms), request count and errors from one wrk --latency output."""

    def latency(pct):
        m = re.search(rf"^\s+{pct}%\s+([\d.]+)(us|ms|s|m|h)\s*$", text, re.M)
        return float(m.group(1)) * UNIT_MS[m.group(2)] if m else None

    rps = re.search(r"^Requests/sec:\s+([\d.]+)", text, re.M)
    total = re.search(r"^\s*(\d+) requests in ([\d.]+\w+),", text, re.M)
    sock = re.search(
        r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text
    )
    lua = re.search(r"^Lua non-2xx: (\d+)", text, re.M)
    wrk_status = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
    errors = dict(zip(("connect", "read", "write", "timeout"), map(int, sock.groups()))) if sock else {
        "connect": 0, "read": 0, "write": 0, "timeout": 0}
    # The Lua hook (when the script has one) counts every status outside 2xx; wrk's own line
    # counts statuses >= 400.
    errors["non_2xx"] = int(lua.group(1)) if lua else int(wrk_status.group(1)) if wrk_status else 0
    errors["total"] = sum(errors.values())
    return {
        "requests_per_sec": float(rps.group(1)) if rps else None,
        "p50_ms": latency(50),
        "p99_ms": latency(99),
        "requests": int(total.group(1)) if total else None,
        "measured_for": total.group(2) if total else None,
        "errors": errors,
    }


SWITCH_KEYS = ("server_involuntary", "server_voluntary", "origin_involuntary", "origin_voluntary")


def parse_switches(path):
    """A run's context switches (bench/run.sh `measure`): the row's server, involuntary and
    voluntary, then the origin's worker; None when the run has no such file."""
    try:
        values = [int(v) for v in path.read_text().split()]
    except (OSError, ValueError):
        return None
    return dict(zip(SWITCH_KEYS, values)) if len(values) == len(SWITCH_KEYS) else None


def load(out):
    meta = {}
    for line in (out / "meta.tsv").read_text().splitlines():
        if line.strip():
            k, _, v = line.partition("\t")
            meta[k] = v
    rows = []
    for line in (out / "rows.tsv").read_text().splitlines():
        if not line.strip():
            continue
        rid, target, wrk, rss, conns, note, extras = (line.split("\t") + [""] * 7)[:7]
        row = {"id": rid, "target": target, "connections": int(conns) if conns else None,
               "note": note or None, "peak_rss_kb": int(rss) if rss not in ("", "-") else None,
               "rounds": 0, "requests_per_sec": None, "rps_min": None, "rps_max": None,
               "spread_pct": None, "p50_ms": None, "p99_ms": None, "p99_min": None,
               "p99_max": None, "requests": None, "errors": None, "runs": []}
        for kv in filter(None, extras.split(";")):
            k, _, v = kv.partition("=")
            row[k] = int(v) if v.isdigit() else v
        if wrk not in ("", "-"):
            row["wrk_outputs"] = wrk.split(",")
            for f in row["wrk_outputs"]:
                run = parse_wrk((out / f).read_text())
                run["file"] = f
                run["switches"] = parse_switches(out / f.replace("wrk-", "cs-", 1))
                row["runs"].append(run)
            summarise(row)
        rows.append(row)
    return meta, rows


def summarise(row):
    """The row's figures over its rounds: medians, the spread, sums."""
    runs = row["runs"]
    rps = [r["requests_per_sec"] for r in runs if r["requests_per_sec"] is not None]
    row["rounds"] = len(runs)
    if rps:
        med = statistics.median(rps)
        row.update(requests_per_sec=med, rps_min=min(rps), rps_max=max(rps),
                   spread_pct=round(100 * (max(rps) - min(rps)) / 2 / med, 1) if med else None)
    for key in ("p50_ms", "p99_ms"):
        vals = [r[key] for r in runs if r[key] is not None]
        row[key] = statistics.median(vals) if vals else None
    p99 = [r["p99_ms"] for r in runs if r["p99_ms"] is not None]
    if p99:
        row["p99_min"], row["p99_max"] = min(p99), max(p99)
    counts = [r["requests"] for r in runs if r["requests"] is not None]
    row["requests"] = sum(counts) if counts else None  # summed over the rounds
    errors = {}
    for r in runs:
        for k, v in r["errors"].items():
            errors[k] = errors.get(k, 0) + v
    row["errors"] = errors
    # Context switches per request, the median of the rounds: how often the server was preempted
    # (on the shared core, mostly by the origin it just woke) or waited, and how often the
    # origin's worker went back to waiting (about once per batch of requests it served).
    for key in SWITCH_KEYS:
        per = [r["switches"][key] / r["requests"] for r in runs
               if r.get("switches") and r["requests"]]
        row[f"{key}_per_request"] = round(statistics.median(per), 3) if per else None


def is_idle(row):
    return "rss_idle_kb" in row


def add_ratios(rows, base_conns):
    """x row3 and x row2 on medians, against the row at the same connection count (3 and 2 at
    CONNECTIONS, 2@256 for a row at 256...)."""
    by_id = {r["id"]: r for r in rows}
    for r in rows:
        for ref in ("3", "2"):
            c = r["connections"]
            base_id = ref if c == base_conns else f"{ref}@{c}"
            base = by_id.get(base_id, {}).get("requests_per_sec")
            ok = r["requests_per_sec"] and base and not is_idle(r)
            r[f"x_row{ref}"] = round(r["requests_per_sec"] / base, 3) if ok else None
    return by_id


def checks(by_id, meta):
    """The targets, on medians: (name, PASS/MISS/SKIP, detail)."""
    out = []

    def get(rid, key):
        return by_id.get(rid, {}).get(key)

    def ratio_check(name, a, b, factor):
        ra, rb = get(a, "requests_per_sec"), get(b, "requests_per_sec")
        if not ra or not rb:
            out.append((name, "SKIP", f"row {a} or row {b} not measured"))
            return
        res = "PASS" if ra >= factor * rb else "MISS"
        out.append((name, res, f"median {ra:,.0f} vs {factor} x {rb:,.0f} = {factor * rb:,.0f} "
                               f"(x{ra / rb:.2f})"))

    def p99_check(name, a, b, slack_ms):
        pa, pb = get(a, "p99_ms"), get(b, "p99_ms")
        if pa is None or pb is None:
            out.append((name, "SKIP", f"row {a} or row {b} not measured"))
            return
        more = f" + {slack_ms:g} ms" if slack_ms else ""
        out.append((name, "PASS" if pa <= pb + slack_ms else "MISS",
                    f"median {pa:.2f} ms vs {pb:.2f} ms{more}"))

    ratio_check("row4 >= 0.95 x row3 requests/s", "4", "3", 0.95)
    ratio_check("row4 >= 1.0 x row2 requests/s", "4", "2", 1.0)
    ratio_check("row4 >= 0.85 x row2 (plain nginx proxying) requests/s", "4", "2", 0.85)
    ratio_check("row4 >= 1.0 x rowhj (HAProxy jwt_verify) requests/s", "4", "hj", 1.0)
    ratio_check("row4 >= 1.0 x rownj (nginx + njs) requests/s", "4", "nj", 1.0)
    ratio_check("row4@256 >= 1.0 x rowhj@256 requests/s", "4@256", "hj@256", 1.0)
    ratio_check("row4@256 >= 1.0 x rownj@256 requests/s", "4@256", "nj@256", 1.0)
    ratio_check("row4@256 >= 0.85 x row4 (its own 32-connection figure) requests/s", "4@256", "4", 0.85)
    p99_check("row4@256 p99 <= rowhj@256 p99", "4@256", "hj@256", 0.0)
    ratio_check("row4 >= 20 x row6 requests/s", "4", "6", 20)
    ratio_check("row5e (ES256 token) >= 0.9 x row4 (HS256) requests/s", "5e", "4", 0.9)
    ratio_check("row5d (EdDSA token) >= 0.9 x row4 (HS256) requests/s", "5d", "4", 0.9)
    ratio_check("row4j (JSON access log, metrics) >= 0.97 x row4 requests/s", "4j", "4", 0.97)
    ratio_check("row4p (3 upstreams, openid_hash, health checks) >= 0.97 x row4r requests/s", "4p", "4r", 0.97)
    ratio_check("row4s (wxgate HTTPS) >= 1.0 x row2s (nginx HTTPS) requests/s", "4s", "2s", 1.0)
    p99_check("row4 p99 <= row3 p99 + 1 ms", "4", "3", 1.0)
    rss = get("4@256", "peak_rss_kb")
    if rss is None:
        out.append(("peak RSS at 256 connections < 64 MiB", "SKIP", "not measured"))
    else:
        out.append(("peak RSS at 256 connections < 64 MiB", "PASS" if rss < 64 * MIB else "MISS",
                    f"{rss / MIB:.1f} MiB (VmHWM of row 4@256's wxgate over its rounds)"))
    cmds, reqs = get("4b", "redis_commands"), get("4b", "requests")
    if cmds is None or not reqs:
        out.append(("row4b: no Redis command per proxied request", "SKIP", "not measured"))
    else:
        per = cmds / reqs
        out.append(("row4b: no Redis command per proxied request", "PASS" if per < 0.01 else "MISS",
                    f"{cmds} Redis commands during {reqs:,} requests, its rounds summed ({per:.4f} "
                    "per request; the 250 ms revocation poll accounts for a few per second)"))
    n = meta.get("idle_connections", "?")
    name = f"idle: wxgate RSS <= 2 x nginx RSS holding {n} idle keep-alive connections"
    gw, ng = by_id.get("idle-wxgate"), by_id.get("idle-nginx")
    if not gw or not ng:
        out.append((name, "SKIP", "not measured"))
    else:
        short = [r["id"] for r in (gw, ng) if r.get("idle_open") != r["connections"]]
        a, b = gw["rss_idle_kb"], ng["rss_idle_kb"]
        detail = f"{a / MIB:.1f} MiB vs 2 x {b / MIB:.1f} MiB = {2 * b / MIB:.1f} MiB (x{a / b:.2f})"
        if short:
            out.append((name, "MISS", detail + "; not every connection held by " + ", ".join(short)))
        else:
            out.append((name, "PASS" if a <= 2 * b else "MISS", detail))
    return [{"check": n, "result": r, "detail": d} for n, r, d in out]


def fmt_ms(v):
    if v is None:
        return "—"
    return f"{v * 1000:.0f} µs" if v < 1 else f"{v:.2f} ms"


def fmt_ratio(v):
    return "—" if v is None else f"{v:.2f}×"


def fmt_mib(kb):
    return "—" if kb is None else f"{kb / MIB:.1f} MiB"


def table(rows):
    lines = ["| # | target | requests/s | spread (min–max) | p50 | p99 | errors | peak RSS | ×row3 | ×row2 |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        if is_idle(r):
            continue
        if r["requests_per_sec"] is None:
            lines.append(f"| {r['id']} | {r['target']} | {r['note'] or 'n/a'} | | | | | | | |")
            continue
        spread = (f"{r['rps_min']:,.0f}–{r['rps_max']:,.0f} (±{r['spread_pct']:.1f}%)"
                  if r["spread_pct"] is not None else "—")
        lines.append(
            f"| {r['id']} | {r['target']} | {r['requests_per_sec']:,.0f} | {spread} | "
            f"{fmt_ms(r['p50_ms'])} | {fmt_ms(r['p99_ms'])} | {r['errors']['total']} | "
            f"{fmt_mib(r['peak_rss_kb'])} | {fmt_ratio(r['x_row3'])} | {fmt_ratio(r['x_row2'])} |")
    return "\n".join(lines)


def idle_table(rows):
    idle = [r for r in rows if is_idle(r)]
    if not idle:
        return ""
    n = idle[0]["connections"]
    lines = [f"| # | server | held | RSS before | RSS holding {n:,} idle | spread (min–max) "
             "| per connection | peak RSS |",
             "|---|---|---:|---:|---:|---:|---:|---:|"]
    for r in idle:
        held = r.get("idle_open") or 0
        per = (f"{(r['rss_idle_kb'] - r['rss_before_kb']) / held:.1f} KiB"
               if held else "—")
        runs = [int(v) for v in str(r.get("rss_idle_runs_kb", "")).split(",") if v.isdigit()]
        spread = (f"{fmt_mib(min(runs))}–{fmt_mib(max(runs))} "
                  f"(±{100 * (max(runs) - min(runs)) / 2 / r['rss_idle_kb']:.1f}%)"
                  if runs and r["rss_idle_kb"] else "—")
        lines.append(f"| {r['id']} | {r['target']} | {held:,} of {r['connections']:,} | "
                     f"{fmt_mib(r['rss_before_kb'])} | {fmt_mib(r['rss_idle_kb'])} | {spread} | "
                     f"{per} | {fmt_mib(r['peak_rss_kb'])} |")
    return "\n".join(lines)


def switch_table(rows):
    timed = [r for r in rows if not is_idle(r) and r.get("server_involuntary_per_request") is not None]
    if not timed:
        return ""
    lines = ["| # | target | server preempted | server waited | origin waited | requests per origin wake-up |",
             "|---|---|---:|---:|---:|---:|"]
    for r in timed:
        ov = r["origin_voluntary_per_request"]
        lines.append(f"| {r['id']} | {r['target']} | {r['server_involuntary_per_request']:.2f} | "
                     f"{r['server_voluntary_per_request']:.2f} | {ov:.2f} | "
                     f"{f'{1 / ov:.1f}' if ov else '—'} |")
    return "\n".join(lines)


COLOURS = {"njs": "#9467bd", "haproxy": "#2ca02c", "nginx": "#7f8c8d", "wxgate": "#1f77b4",
           "node": "#d98a2b"}


def colour(target):
    t = target.lower()
    return next((c for k, c in COLOURS.items() if k in t), "#555")


def chart(rows, meta):
    """Horizontal bars drawn by hand: requests/s and p99 (the median of the rounds, a thin line
    from the lowest to the highest round), then the idle rows' RSS (before, and holding them)."""
    label_w, bar_w, row_h, top, gap = 440, 440, 26, 70, 50
    width = label_w + bar_w + 170
    timed = [r for r in rows if not is_idle(r)]
    idle = [r for r in rows if is_idle(r)]
    panels = [("Requests per second, median of the rounds (line: min–max; higher is better)",
               timed, "requests_per_sec", "rps_min", "rps_max", lambda v: f"{v:,.0f}"),
              ("p99 latency, median of the rounds (line: min–max; lower is better)",
               timed, "p99_ms", "p99_min", "p99_max", fmt_ms)]
    if idle:
        n = idle[0]["connections"]
        panels.append((f"RSS holding {n:,} idle keep-alive connections (light: before them)",
                       idle, "rss_idle_kb", None, None, fmt_mib))
    settings = textwrap.wrap(meta.get("settings", ""), 150)
    top += 14 * max(0, len(settings) - 1)
    height = top + sum(len(p[1]) * row_h + 40 + gap for p in panels)
    svg = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
           f'viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="13">',
           f'<rect width="{width}" height="{height}" fill="#fff"/>',
           '<text x="16" y="28" font-size="18" font-weight="bold">wxgate side-by-side benchmark</text>']
    for i, line in enumerate(settings):
        svg.append(f'<text x="16" y="{50 + 14 * i}" fill="#555" font-size="11">{escape(line)}</text>')
    for i, (name, c) in enumerate(COLOURS.items()):
        x = width - 410 + i * 82
        svg.append(f'<rect x="{x}" y="16" width="12" height="12" fill="{c}"/>'
                   f'<text x="{x + 16}" y="27">{name}</text>')
    y0 = top
    for title, prow, key, lo, hi, fmt in panels:
        svg.append(f'<text x="16" y="{y0 + 14}" font-weight="bold">{escape(title)}</text>')
        vals = [r[hi] if hi and r.get(hi) else r[key] for r in prow if r.get(key)]
        vmax = max(vals) if vals else 1
        for i, r in enumerate(prow):
            y = y0 + 28 + i * row_h
            label = f"{r['id']}  {r['target']}"
            if len(label) > 58:
                label = label[:57] + "…"
            svg.append(f'<text x="16" y="{y + 16}">{escape(label)}</text>')
            v = r.get(key)
            if not v:
                svg.append(f'<text x="{label_w}" y="{y + 16}" fill="#999">'
                           f'{escape(r["note"] or "n/a")}</text>')
                continue
            w = max(1.0, bar_w * v / vmax)
            svg.append(f'<rect x="{label_w}" y="{y + 3}" width="{w:.1f}" height="{row_h - 8}" '
                       f'fill="{colour(r["target"])}"/>')
            if key == "rss_idle_kb" and r.get("rss_before_kb"):
                wb = max(1.0, bar_w * r["rss_before_kb"] / vmax)
                svg.append(f'<rect x="{label_w}" y="{y + 3}" width="{wb:.1f}" height="{row_h - 8}" '
                           'fill="#fff" fill-opacity="0.45"/>')
            end = w
            if lo and hi and r.get(lo) is not None and r.get(hi) is not None:
                x1, x2 = label_w + bar_w * r[lo] / vmax, label_w + bar_w * r[hi] / vmax
                ym = y + 3 + (row_h - 8) / 2
                svg.append(f'<line x1="{x1:.1f}" y1="{ym:.1f}" x2="{x2:.1f}" y2="{ym:.1f}" '
                           'stroke="#222" stroke-width="1.2"/>'
                           f'<line x1="{x1:.1f}" y1="{ym - 4:.1f}" x2="{x1:.1f}" y2="{ym + 4:.1f}" '
                           'stroke="#222" stroke-width="1.2"/>'
                           f'<line x1="{x2:.1f}" y1="{ym - 4:.1f}" x2="{x2:.1f}" y2="{ym + 4:.1f}" '
                           'stroke="#222" stroke-width="1.2"/>')
                end = max(w, x2 - label_w)
            svg.append(f'<text x="{label_w + end + 6:.1f}" y="{y + 16}">{escape(fmt(v))}</text>')
        y0 += len(prow) * row_h + 40 + gap
    svg.append("</svg>")
    return "\n".join(svg) + "\n"


def main(argv):
    out = Path(argv[1]) if len(argv) > 1 and not argv[1].startswith("--") else Path("bench/out")
    strict = "--strict" in argv
    meta, rows = load(out)
    conns = int(meta.get("connections", "0") or 0)
    by_id = add_ratios(rows, conns)
    results = {"meta": meta, "rows": rows, "checks": checks(by_id, meta)}
    md = table(rows)
    idle_md = idle_table(rows)
    switch_md = switch_table(rows)
    notes = [f"- {r['id']}: {r['note']}" for r in rows if r["note"] and r["requests_per_sec"]]
    md_full = (f"{meta.get('settings', '')}\n\n"
               "requests/s, p50 and p99: the median of the rounds; spread: the lowest and highest "
               "round, ± half of that range as a share of the median; errors: summed over the "
               "rounds; peak RSS: VmHWM of the row's server (the nginx worker) over all its "
               "rounds; ×row3/×row2: medians against rows 3 and 2 at the same connection count."
               f"\n\n{md}\n"
               + (f"\nIdle keep-alive connections (a fresh server each; VmRSS before the clients "
                  f"and while they are held, after one request each):\n\n{idle_md}\n"
                  if idle_md else "")
               + (f"\nContext switches per request (medians of the rounds; /proc of the row's "
                  f"server and of the origin's worker, which share the server core; rows 4p and 7 "
                  f"also reach other origins):\n\n{switch_md}\n" if switch_md else "")
               + ("\nNotes:\n" + "\n".join(notes) + "\n" if notes else ""))
    (out / "table.md").write_text(md_full)
    (out / "results.json").write_text(json.dumps(results, indent=2, ensure_ascii=False) + "\n")
    (out / "chart.svg").write_text(chart(rows, meta))
    print(md_full)
    print("Checks (on medians):")
    for c in results["checks"]:
        print(f"  {c['result']:<4}  {c['check']}: {c['detail']}")
    print(f"\nWrote {out / 'results.json'}, {out / 'table.md'}, {out / 'chart.svg'}")
    missed = any(c["result"] == "MISS" for c in results["checks"])
    return 1 if strict and missed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
