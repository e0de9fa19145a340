"""Reading a labels CSV (`cxr convert --labels`): its rows, with every refusal naming the line.

The rows become sources in `cxrdata.sources`; here the file is read and
checked as text and as a table: UTF-8, no NUL byte, no field over
`csv.field_size_limit()`, the header's number of fields on every row (an
unbalanced quote is reported on the line where its row starts), the needed
columns, no empty path or label, and labels among `class_names`. Each is a
ValueError naming the CSV and the line(s); the CLI exits 2.
"""

from __future__ import annotations

import csv
import io


def read_rows(labels: str) -> tuple[list[str], list[tuple[int, dict]]]:
    """The CSV's columns and its rows, each with the line it starts on.

    Every refusal names the file and the line: text that is not UTF-8, a NUL
    byte, a field over `csv.field_size_limit()`, a row with too many or too few
    fields (an unbalanced quote is reported on the line where its row starts).
    """
    with open(labels, "rb") as f:
        data = f.read()
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = data[: e.start].count(b"\n") + 1
        raise ValueError(
            f"{labels!r} is not UTF-8 text: line {line} holds the byte {data[e.start]:#04x}. "
            "Save the CSV as UTF-8."
        ) from None
    if "\0" in text:
        raise ValueError(
            f"{labels!r}: line {text.count(chr(10), 0, text.index(chr(0))) + 1} holds a NUL byte; "
            "a labels CSV is text. Save it as UTF-8 text."
        )
    reader = csv.reader(io.StringIO(text, newline=""))
    records = []  # (first line, last line, fields)
    while True:
        start = reader.line_num + 1
        try:
            fields = next(reader)
        except StopIteration:
            break
        except csv.Error as e:
            raise ValueError(f"{labels!r}: line {start}: {e}. Fix that row of the CSV.") from None
        if fields:  # blank lines are skipped, as csv.DictReader does
            records.append((start, reader.line_num, fields))
    columns = records[0][2] if records else []
    ragged = [
        f"{first}"
        + (f" (its quoted field runs to line {last}: an unbalanced quote?)" if last > first else "")
        for first, last, fields in records[1:]
        if len(fields) != len(columns)
    ]
    if ragged:
        raise ValueError(
            f"{labels!r}: line(s) {', '.join(ragged[:10])} do not have the "
            f"{len(columns)} fields of the header ({','.join(columns)}). Quote fields "
            "that hold commas."
        )
    return columns, [(first, dict(zip(columns, fields))) for first, _, fields in records[1:]]


def check_labels(labels, columns, rows, group_by, class_names) -> tuple[str, ...]:
    """Checks the CSV's columns and labels (naming the lines); returns the class names."""
    needed = ["path", "label"] + ([group_by] if group_by else [])
    missing = [c for c in needed if c not in columns]
    if missing:
        raise ValueError(
            f"{labels!r} lacks column(s) {', '.join(missing)}. Its columns (line 1): "
            f"{', '.join(columns) or '(none)'}. Expected path,label[,{group_by or 'group'}]."
        )
    if not rows:
        raise ValueError(f"{labels!r} has no rows.")
    bad = [n for n, r in rows if not (r["label"] or "").strip() or not (r["path"] or "").strip()]
    if bad:
        raise ValueError(f"{labels!r}: empty path or label on line(s) {', '.join(map(str, bad[:10]))}.")
    found = sorted({r["label"].strip() for _, r in rows})
    if class_names is None:
        return tuple(found)
    unknown = sorted(set(found) - set(class_names))
    if unknown:
        lines = [n for n, r in rows if r["label"].strip() in unknown]
        raise ValueError(
            f"{labels!r} has label(s) not in `class_names`: {', '.join(map(repr, unknown))} "
            f"(line(s) {', '.join(map(str, lines[:10]))}). "
            f"Add them to class_names or fix the CSV. Received: class_names={list(class_names)}"
        )
    return tuple(class_names)
