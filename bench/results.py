"""Results: each section adds a table (and its raw data); the whole prints as
Markdown and is saved as JSON, both stamped with the machine and the command."""
from __future__ import annotations

import json
import statistics
from dataclasses import dataclass, field
from pathlib import Path


def median(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def fmt(x, digits: int = 1, unit: str = "") -> str:
    if x is None:
        return "–"
    if isinstance(x, float):
        return f"{x:,.{digits}f}{unit}"
    if isinstance(x, int):
        return f"{x:,}{unit}"
    return f"{x}{unit}"


@dataclass
class Section:
    key: str
    title: str
    command: str                   # how to reproduce just this part
    headers: list[str]
    rows: list[list] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    raw: dict = field(default_factory=dict)
    machine_load: str = ""

    def markdown(self) -> str:
        out = [f"### {self.title}", "", f"`{self.command}`" + (f" — {self.machine_load}" if self.machine_load else ""), ""]
        out.append("| " + " | ".join(self.headers) + " |")
        out.append("|" + "|".join("---" if i == 0 else "---:" for i in range(len(self.headers))) + "|")
        for r in self.rows:
            out.append("| " + " | ".join(str(c) for c in r) + " |")
        if self.notes:
            out.append("")
            out += [f"- {n}" for n in self.notes]
        return "\n".join(out) + "\n"


@dataclass
class Results:
    machine: dict
    command: str
    sections: list[Section] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    def add(self, s: Section) -> None:
        self.sections.append(s)

    def markdown(self) -> str:
        m = self.machine
        out = [f"## connscope benchmarks, {m['date_utc']}", "",
               f"Machine: {m['cores']} cores ({m['cpu']}), {m['memory_gb']} GB, kernel {m['kernel']}, "
               f"host {m['host']}; {m['nginx']}; {m['ab'].split(',')[0]}; bcc {m['bcc']}; "
               f"Python {m['python']}; connscope at {m.get('connscope_commit', '?')} "
               f"({m.get('connscope_uncommitted_files', '?')} uncommitted files in tracer/ and bpf/). "
               f"Load average at start {m['load_average']}, "
               f"at end {m.get('load_average_end', '?')}.", "",
               f"Command: `{self.command}`", ""]
        for s in self.sections:
            out.append(s.markdown())
        if self.errors:
            out += ["### Errors", ""] + [f"- {e}" for e in self.errors] + [""]
        return "\n".join(out)

    def save(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        data = {"machine": self.machine, "command": self.command, "errors": self.errors,
                "sections": [{"key": s.key, "title": s.title, "command": s.command,
                              "machine_load": s.machine_load,
                              "headers": s.headers, "rows": s.rows, "notes": s.notes,
                              "raw": s.raw} for s in self.sections]}
        path.write_text(json.dumps(data, indent=1, default=str) + "\n")
