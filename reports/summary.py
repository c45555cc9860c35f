"""The comparison as a terminal reads it: one compact table within 100 columns (the full
tables stay in report/), with each method's headline, its paired difference to the
reference method, the KL, the out-of-domain score and the reward-hacking alarm."""

from __future__ import annotations

from flowarena.reports.tables import Comparison, format_cell, markdown_table

WIDTH = 100


def _clip(text: str, n: int) -> str:
    return text if len(text) <= n else text[: n - 1] + "…"


def terminal_summary(c: Comparison, width: int = WIDTH) -> str:
    """Rows of `c.records` under short headers; a column that would push the table past
    `width` is dropped (the files keep every column)."""
    if not c.records or all(r["method"].startswith("base") for r in c.records):
        return "no finished method x seed cells yet"
    head = next((m for m in c.metrics if m.paired and m.role == "primary"), None)
    ood = next((m for m in c.metrics if m.role == "secondary"), None)
    models = len({r["model"] for r in c.records}) > 1
    columns = ([("model", lambda r: r["model"])] if models else []) + [
        ("method", lambda r: _clip("base" if r["method"].startswith("base") else r["method"], 18)),
        ("seeds", lambda r: str(r["seeds"]))]
    if head is not None:
        columns.append((head.title.replace("Soft-TIFA ", ""),
                        lambda r: format_cell(r, head.key, head.digits)))
        if c.reference:
            columns.append((f"Δ vs {c.reference} [95 % CI]",
                            lambda r: r.get("vs_reference", "").removesuffix(f" vs {c.reference}")))
    columns.append(("KL", lambda r: "" if r.get("kl") is None else f"{r['kl']:.1e}"))
    if ood is not None:
        columns.append(("ood", lambda r: format_cell(r, ood.key, ood.digits)))
    columns.append(("hacking?", lambda r: "" if r["method"].startswith("base") else r.get("alarm", "")))
    rows = [[fn(r) for _, fn in columns] for r in c.records]
    header = [name for name, _ in columns]
    for name in ("ood", "KL", "model"):  # what goes first when the table is too wide
        if len(markdown_table(header, rows).splitlines()[0]) <= width:
            break
        if name in header:
            i = header.index(name)
            header.pop(i)
            rows = [r[:i] + r[i + 1:] for r in rows]
    legend = f"\nood: {ood.title}" if ood is not None and "ood" in header else ""
    return markdown_table(header, rows) + legend
