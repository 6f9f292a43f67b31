#!/usr/bin/env python3
"""Turn the raw outputs of bench/run.sh into the table, the checks, results.json and chart.svg.

Reads OUT/rows.tsv (one line per row: id, target, wrk output file or "-", peak RSS in kB or "-",
connections, note, extras as k=v;k=v) and OUT/meta.tsv (key, value); parses wrk's --latency
output; writes OUT/results.json, OUT/table.md and OUT/chart.svg; prints the table and the checks.
Exit 1 with --strict when a check is MISS. No dependencies beyond the standard library.
"""

import json
import re
import sys
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
               "requests_per_sec": None, "p50_ms": None, "p99_ms": None, "requests": None,
               "errors": None}
        for kv in filter(None, extras.split(";")):
            k, _, v = kv.partition("=")
            row[k] = int(v) if v.isdigit() else v
        if wrk not in ("", "-"):
            row["wrk_output"] = wrk
            row.update(parse_wrk((out / wrk).read_text()))
        rows.append(row)
    return meta, rows


def add_ratios(rows, base_conns):
    by_id = {r["id"]: r for r in rows}
    for r in rows:
        for ref in ("3", "2"):
            base = by_id.get(ref, {}).get("requests_per_sec")
            ok = r["requests_per_sec"] and base and r["connections"] == base_conns
            r[f"x_row{ref}"] = round(r["requests_per_sec"] / base, 3) if ok else None
    return by_id


def checks(by_id):
    """The targets: (name, PASS/MISS/SKIP, detail)."""
    out = []

    def get(rid, key):
        return by_id.get(rid, {}).get(key)

    def ratio_check(name, a, b, factor):
        ra, rb = get(a, "requests_per_sec"), get(b, "requests_per_sec")
        if not ra or not rb:
            out.append((name, "SKIP", f"row {a} or row {b} not measured"))
            return
        res = "PASS" if ra >= factor * rb else "MISS"
        out.append((name, res, f"{ra:,.0f} vs {factor} x {rb:,.0f} = {factor * rb:,.0f} (x{ra / rb:.2f})"))

    ratio_check("row4 >= 0.95 x row3 requests/s", "4", "3", 0.95)
    ratio_check("row4 >= 1.0 x row2 requests/s", "4", "2", 1.0)
    ratio_check("row4 >= 20 x row6 requests/s", "4", "6", 20)
    ratio_check("row5e (ES256 token) >= 0.9 x row4 (HS256) requests/s", "5e", "4", 0.9)
    ratio_check("row5d (EdDSA token) >= 0.9 x row4 (HS256) requests/s", "5d", "4", 0.9)
    ratio_check("row4j (JSON access log, metrics) >= 0.97 x row4 requests/s", "4j", "4", 0.97)
    ratio_check("row4p (3 upstreams, openid_hash, health checks) >= 0.97 x row4r requests/s", "4p", "4r", 0.97)
    ratio_check("row4s (wxgate HTTPS) >= 1.0 x row2s (nginx HTTPS) requests/s", "4s", "2s", 1.0)
    p4, p3 = get("4", "p99_ms"), get("3", "p99_ms")
    if p4 is None or p3 is None:
        out.append(("row4 p99 <= row3 p99 + 1 ms", "SKIP", "not measured"))
    else:
        out.append(("row4 p99 <= row3 p99 + 1 ms", "PASS" if p4 <= p3 + 1.0 else "MISS",
                    f"{p4:.2f} ms vs {p3:.2f} + 1 ms"))
    rss = get("4@256", "peak_rss_kb")
    if rss is None:
        out.append(("peak RSS at 256 connections < 64 MiB", "SKIP", "not measured"))
    else:
        out.append(("peak RSS at 256 connections < 64 MiB", "PASS" if rss < 64 * MIB else "MISS",
                    f"{rss / MIB:.1f} MiB (VmHWM of wxgate)"))
    cmds, reqs = get("4b", "redis_commands"), get("4b", "requests")
    if cmds is None or not reqs:
        out.append(("row4b: no Redis command per proxied request", "SKIP", "not measured"))
    else:
        per = cmds / reqs
        out.append(("row4b: no Redis command per proxied request", "PASS" if per < 0.01 else "MISS",
                    f"{cmds} Redis commands during {reqs:,} requests ({per:.4f} per request; "
                    "the 250 ms revocation poll accounts for a few per second)"))
    return [{"check": n, "result": r, "detail": d} for n, r, d in out]


def fmt_ms(v):
    if v is None:
        return "—"
    return f"{v * 1000:.0f} µs" if v < 1 else f"{v:.2f} ms"


def fmt_ratio(v):
    return "—" if v is None else f"{v:.2f}×"


def table(rows):
    lines = ["| # | target | requests/s | p50 | p99 | errors | peak RSS | ×row3 | ×row2 |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        if r["requests_per_sec"] is None:
            lines.append(f"| {r['id']} | {r['target']} | {r['note'] or 'n/a'} | | | | | | |")
            continue
        rss = f"{r['peak_rss_kb'] / MIB:.1f} MiB" if r["peak_rss_kb"] else "—"
        lines.append(
            f"| {r['id']} | {r['target']} | {r['requests_per_sec']:,.0f} | {fmt_ms(r['p50_ms'])} | "
            f"{fmt_ms(r['p99_ms'])} | {r['errors']['total']} | {rss} | "
            f"{fmt_ratio(r['x_row3'])} | {fmt_ratio(r['x_row2'])} |")
    return "\n".join(lines)


def chart(rows, meta):
    """Two panels of horizontal bars: requests/s and p99, one bar per row, drawn by hand."""
    label_w, bar_w, row_h, top, gap = 440, 440, 26, 70, 50
    width = label_w + bar_w + 140
    colours = {"nginx": "#7f8c8d", "wxgate": "#1f77b4", "node": "#d98a2b"}

    def colour(target):
        t = target.lower()
        return next((c for k, c in colours.items() if k in t), "#555")

    panels = [("Requests per second (higher is better)", "requests_per_sec",
               lambda v: f"{v:,.0f}"),
              ("p99 latency (lower is better)", "p99_ms", fmt_ms)]
    panel_h = len(rows) * row_h + 40
    height = top + len(panels) * (panel_h + gap)
    svg = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
           f'viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="13">',
           f'<rect width="{width}" height="{height}" fill="#fff"/>',
           f'<text x="16" y="28" font-size="18" font-weight="bold">wxgate side-by-side benchmark</text>',
           f'<text x="16" y="50" fill="#555">{escape(meta.get("settings", ""))}</text>']
    for i, (name, c) in enumerate(colours.items()):
        x = width - 260 + i * 85
        svg.append(f'<rect x="{x}" y="16" width="12" height="12" fill="{c}"/>'
                   f'<text x="{x + 16}" y="27">{name}</text>')
    y0 = top
    for title, key, fmt in panels:
        svg.append(f'<text x="16" y="{y0 + 14}" font-weight="bold">{escape(title)}</text>')
        vals = [r[key] for r in rows if r[key]]
        vmax = max(vals) if vals else 1
        for i, r in enumerate(rows):
            y = y0 + 28 + i * row_h
            label = f"{r['id']}  {r['target']}"
            if len(label) > 58:
                label = label[:57] + "…"
            svg.append(f'<text x="16" y="{y + 16}">{escape(label)}</text>')
            v = r[key]
            if not v:
                svg.append(f'<text x="{label_w}" y="{y + 16}" fill="#999">'
                           f'{escape(r["note"] or "n/a")}</text>')
                continue
            w = max(1.0, bar_w * v / vmax)
            svg.append(f'<rect x="{label_w}" y="{y + 3}" width="{w:.1f}" height="{row_h - 8}" '
                       f'fill="{colour(r["target"])}"/>')
            svg.append(f'<text x="{label_w + w + 6:.1f}" y="{y + 16}">{escape(fmt(v))}</text>')
        y0 += panel_h + gap
    svg.append("</svg>")
    return "\n".join(svg) + "\n"


def main(argv):
    out = Path(argv[1]) if len(argv) > 1 and not argv[1].startswith("--") else Path("bench/out")
    strict = "--strict" in argv
    meta, rows = load(out)
    conns = int(meta.get("connections", "0") or 0)
    by_id = add_ratios(rows, conns)
    results = {"meta": meta, "rows": rows, "checks": checks(by_id)}
    md = table(rows)
    notes = [f"- {r['id']}: {r['note']}" for r in rows if r["note"] and r["requests_per_sec"]]
    md_full = (f"{meta.get('settings', '')}\n\n{md}\n" + ("\nNotes:\n" + "\n".join(notes) + "\n"
                                                         if notes else ""))
    (out / "table.md").write_text(md_full)
    (out / "results.json").write_text(json.dumps(results, indent=2, ensure_ascii=False) + "\n")
    (out / "chart.svg").write_text(chart(rows, meta))
    print(md_full)
    print("Checks:")
    for c in results["checks"]:
        print(f"  {c['result']:<4}  {c['check']}: {c['detail']}")
    print(f"\nWrote {out / 'results.json'}, {out / 'table.md'}, {out / 'chart.svg'}")
    missed = any(c["result"] == "MISS" for c in results["checks"])
    return 1 if strict and missed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
