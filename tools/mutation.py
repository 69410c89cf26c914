"""Mutation testing of the code behind the reported numbers (``make mutation``; not in CI).

Each target pairs modules with the test files (and a ``-k`` selection) that guard them, so one
target takes minutes. For each target the checkout is copied to ``build/mutation/TARGET/``,
mutmut (https://github.com/boxed/mutmut, 3.x) is configured there and run, and every mutant
that is not killed is printed with its diff and written to ``build/mutation/TARGET/survivors.md``.
``docs/testing.md`` records, per module, which survivors remain and why each is harmless;
``tools/mutation-justified.txt`` lists them by function and mutated line, and a run fails
(exit 1) only on a survivor that is not in that list, printing it.

mutmut skips decorated functions (it cannot place its trampoline under a decorator). In the
copy, and only there, ``@torch.no_grad()`` (and Lightning's ``@rank_zero_only``) above a function
is rewritten as the equivalent ``name = torch.no_grad()(name)`` after it, so ``greedy_decode``,
``beam_search`` and ``MetricsCSVLogger.log_metrics`` are mutated.

Usage::

    python tools/mutation.py                # every target
    python tools/mutation.py bleu decoding  # some
    python tools/mutation.py --list         # the targets, their modules and tests
"""

from __future__ import annotations

import argparse
import ast
import fnmatch
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from mutation_constants import run_constants  # noqa: E402
from mutation_targets import TARGETS, Target  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
BUILD = ROOT / "build" / "mutation"
JUSTIFIED = ROOT / "tools" / "mutation-justified.txt"
#: the package whose modules are mutated; targets name modules relative to it
PACKAGE = "d2l_lightning"


def source(module: str) -> str:
    """A target's module as a path from the repository root (``bench/`` is outside the package)."""
    return module if module.startswith("bench/") else f"{PACKAGE}/{module}"


def dotted(module: str) -> str:
    """The importable name of a target's module (``d2l_lightning.models.bleu``)."""
    return source(module)[:-3].replace("/", ".")


def qualified(pattern: str) -> str:
    """A function pattern of a target with its package (``bench.`` patterns have none)."""
    return pattern if pattern.startswith("bench.") else f"{PACKAGE}.{pattern}"


def copy_checkout(dest: Path) -> None:
    """Copy tracked and untracked, not ignored, files of the checkout to ``dest``."""
    if dest.exists():
        shutil.rmtree(dest)
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=ROOT,
                           check=True, capture_output=True, text=True).stdout.split("\0")
    for rel in filter(None, files):
        src = ROOT / rel
        if src.is_file():
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / rel)


#: every pytest run of a mutation target: no cache in the copies, a plain process's signal
#: handlers (tools/mutmut_signals.py), warnings off
PYTEST_ARGS = ("-p", "no:cacheprovider", "-p", "tools.mutmut_signals", "-W", "ignore")

#: decorators that wrap a function without changing what it computes (rewritten in the copy)
UNWRAPPED = ("torch.no_grad()", "rank_zero_only")


def undecorate_no_grad(path: Path) -> int:
    """Rewrite the ``UNWRAPPED`` decorators as an assignment after the function; count them."""
    lines = path.read_text().splitlines(keepends=True)
    edits = []
    for node in ast.walk(ast.parse("".join(lines))):
        if not isinstance(node, ast.FunctionDef):
            continue
        for dec in node.decorator_list:
            if ast.unparse(dec) in UNWRAPPED:
                indent = " " * node.col_offset
                edits.append((node.end_lineno, dec.lineno,
                              f"{indent}{node.name} = {ast.unparse(dec)}({node.name})\n"))
    for end, dec_line, assignment in sorted(edits, reverse=True):
        lines.insert(end, assignment)
        del lines[dec_line - 1]
    path.write_text("".join(lines))
    return len(edits)


def skip_unselected(path: Path, module: str, patterns: list[str], exclude: list[str]) -> int:
    """Mark functions that no pattern selects ``# pragma: no mutate block``; count them.

    mutmut would still wrap them in its trampoline, which breaks code that inspects its
    caller's frame (``save_hyperparameters`` in a LightningModule's ``__init__``).
    """
    lines = path.read_text().splitlines(keepends=True)
    tree = ast.parse("".join(lines))
    functions = [(f"x_{n.name}", n) for n in tree.body if isinstance(n, ast.FunctionDef)]
    functions += [(f"xǁ{c.name}ǁ{n.name}", n) for c in tree.body if isinstance(c, ast.ClassDef)
                  for n in c.body if isinstance(n, ast.FunctionDef)]
    skipped = 0
    for name, node in functions:
        mutant = f"{module}.{name}__mutmut_1"
        if (any(fnmatch.fnmatch(mutant, p) for p in patterns)
                and not any(fnmatch.fnmatch(mutant, p) for p in exclude)):
            continue
        colon = node.body[0].lineno - 2  # the header's last line (docstrings follow it)
        if lines[colon].rstrip().endswith(":"):
            lines[colon] = lines[colon].rstrip() + "  # pragma: no mutate block\n"
            skipped += 1
    path.write_text("".join(lines))
    return skipped


def mutmut_config(target: Target) -> str:
    """The ``[tool.mutmut]`` section of a target."""
    roots = sorted({source(m).split("/")[0] + "/" for m in target.modules})
    others = [p for p in ("train.py", "predict.py", "export.py", "bench/", "docs/", "README.md",
                          "tools/") if p not in roots]  # (tests read docs/ and the README too)
    pytest_args = list(PYTEST_ARGS)
    if target.select:
        pytest_args += ["-k", target.select]
    quoted = ", ".join(f'"{a}"' for a in pytest_args)
    return "\n".join([
        "", "[tool.mutmut]",
        f"source_paths = {roots!r}".replace("'", '"'),
        f"only_mutate = {[source(m) for m in target.modules]!r}".replace("'", '"'),
        f"also_copy = {others!r}".replace("'", '"'),
        f"pytest_add_cli_args_test_selection = {target.tests!r}".replace("'", '"'),
        f"pytest_add_cli_args = [{quoted}]",
        'process_isolation = "forkserver"',  # torch is not fork-safe after it has run
        "use_git_change_detection = false",
        "timeout_multiplier = 5.0", "timeout_constant = 20.0",
        f"debug = {'true' if target.debug else 'false'}", ""])


def mutant_patterns(target: Target, functions: list[str] | None = None) -> list[str]:
    """The names mutmut gives the selected functions' mutants (``module.x_fn__mutmut_N``)."""
    out = []
    for pattern in target.functions if functions is None else functions:
        if pattern == "*":
            out += [dotted(m) + ".*" for m in target.modules]
            continue
        if pattern.endswith(".*") and not pattern.split(".")[-2][:1].isupper():
            out.append(qualified(pattern))  # a whole module: functions and methods
            continue
        parts = pattern.split(".")
        owner = [p for p in parts[:-1] if p[:1].isupper()]
        module = ".".join(parts[:-1 - len(owner)])
        name = "x" + "".join(f"ǁ{c}ǁ" for c in owner) + ("" if owner else "_") + parts[-1]
        out.append(qualified(f"{module}.{name}__mutmut_*"))
    return out


def survivor_key(mutant: str, diff: str) -> str:
    """``function: mutated line`` of a mutant, stable when other mutants are renumbered."""
    function = re.sub(r"__mutmut_\d+$", "", mutant.rsplit(".", 1)[-1])
    added = [line[1:].strip() for line in diff.splitlines()
             if line.startswith("+") and not line.startswith("+++")]
    return f"{function}: {' / '.join(added)}"


def justified_keys(target: str) -> set[str]:
    """The survivors of ``target`` that ``docs/testing.md`` justifies (see JUSTIFIED)."""
    if not JUSTIFIED.exists():
        return set()
    keys = set()
    for line in JUSTIFIED.read_text(encoding="utf-8").splitlines():
        if line.strip() and not line.startswith("#"):
            name, _, key = line.partition(" ")
            if name == target:
                keys.add(key.strip())
    return keys


#: a mutant whose tests fail, or run past mutmut's time limit (an endless loop, such as
#: ``iter(read, None)`` that never meets its sentinel: the suite would hang until pytest-timeout
#: fails it), is caught
KILLED = ("killed", "timeout")

#: statuses mutmut gives a mutant whose tests neither passed nor failed plainly: exit 2 (a
#: ``KeyboardInterrupt`` out of a test ends the session: a Ctrl-C test's mutant) and any other
#: exit of its forked worker. Such a mutant's tests run again in a plain pytest process.
RECHECKED = ("check was interrupted by user", "suspicious")


def recheck(mutants: Path, mutant: str, reaching: dict[str, list[str]],
            env: dict[str, str]) -> str:
    """``killed`` or ``survived``: the tests reaching ``mutant`` in a plain pytest process.

    ``reaching`` is mutmut's stats: the tests by function.
    """
    tests = sorted(reaching.get(re.sub(r"__mutmut_\d+$", "", mutant), []))
    if not tests:
        return "no tests"
    cmd = [sys.executable, "-m", "pytest", "-x", "-q", *PYTEST_ARGS, *tests]
    rc = subprocess.run(cmd, cwd=mutants, env={**env, "MUTANT_UNDER_TEST": mutant},
                        capture_output=True).returncode
    return "survived" if rc == 0 else "killed"


def run_target(name: str, target: Target, max_children: int | None,
               survivors_only: bool = False) -> dict[str, list[str]]:
    """Mutate one target; return mutant names by status.

    With ``survivors_only``, only the mutants the last run of this target did not kill run
    again (on today's tests); the others keep their last status. The counts of the target's
    first run are kept in ``scores.json`` as ``first`` (delete the folder to start afresh).
    """
    work = BUILD / name
    last, first = {}, None
    if (work / "scores.json").exists():  # the first run's counts stay as the "before"
        before = json.loads((work / "scores.json").read_text(encoding="utf-8"))
        last = before.get("statuses", {}) if survivors_only else {}
        first = before.get("first") or {k: before[k] for k in ("date", "commit", "modules")}
    rerun = [k for k, v in last.items() if v not in KILLED]
    tested = commit()  # what is copied and tested
    copy_checkout(work)
    shimmed = sum(undecorate_no_grad(work / source(m)) for m in target.modules)
    patterns = mutant_patterns(target)
    exclude = mutant_patterns(target, target.exclude)
    for m in target.modules:
        skip_unselected(work / source(m), dotted(m), patterns, exclude)
    with open(work / "pyproject.toml", "a", encoding="utf-8") as f:
        f.write(mutmut_config(target))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "D2L_DATA_DIR": "", "WANDB_MODE": "disabled",
           "PYTHONWARNINGS": "ignore"}
    chosen = [k for k in rerun if ": " not in k] if last else patterns
    cmd = [sys.executable, "-m", "mutmut", "run", *chosen]
    if max_children:
        cmd[4:4] = ["--max-children", str(max_children)]
    start = time.time()
    print(f"== {name}: {', '.join(target.modules)} ({shimmed} decorators unwrapped); "
          f"tests {' '.join(target.tests)} -k {target.select!r}"
          + (f"; again the {len(rerun)} not killed last time" if last else ""), flush=True)
    with open(work / "mutmut-run.log", "w") as log:
        rc = (subprocess.run(cmd, cwd=work, env=env, stdout=log, stderr=subprocess.STDOUT)
              if chosen else subprocess.CompletedProcess(cmd, 0))
    if rc.returncode:
        tail = (work / "mutmut-run.log").read_text(errors="replace").replace("\r", "\n")
        print(f"   {name}: mutmut failed (exit {rc.returncode}); the end of "
              f"{(work / 'mutmut-run.log').relative_to(ROOT)}:\n{tail[-1500:]}", flush=True)
        return {"mutmut failed": [name], "not justified": [f"{name} (mutmut failed)"]}
    out = subprocess.run([sys.executable, "-m", "mutmut", "results", "--all", "true"], cwd=work,
                         env=env, capture_output=True, text=True).stdout
    statuses = dict(last)
    for line in out.splitlines():
        m = re.match(r"\s+(\S+): (.+)$", line)
        if (m and any(fnmatch.fnmatch(m.group(1), p) for p in patterns)
                and (not last or m.group(1) in rerun) and m.group(2) != "not checked"):
            statuses[m.group(1)] = m.group(2)
    odd = [m for m, s in statuses.items() if s in RECHECKED and (not last or m in rerun)]
    if odd:
        stats = json.loads((work / "mutants" / "mutmut-stats.json").read_text(encoding="utf-8"))
        for mutant in odd:
            statuses[mutant] = recheck(work / "mutants", mutant,
                                       stats["tests_by_mangled_function_name"], env)
    keys = {}
    for mutant, status in statuses.items():
        if status not in KILLED and ": " not in mutant:
            diff = subprocess.run([sys.executable, "-m", "mutmut", "show", mutant], cwd=work,
                                  env=env, capture_output=True, text=True).stdout
            keys[mutant] = (survivor_key(mutant, diff), diff)
    if target.constants:
        print(f"   {name}: constants of {', '.join(target.constants)}", flush=True)
        select = target.select if target.constant_select is None else target.constant_select
        only = {k for k in rerun if ": " in k} if last else None
        for module, line, status in run_constants(
                work, [source(m) for m in target.constants], target.tests, select, only=only):
            statuses[f"{module.removeprefix(PACKAGE + '/')}: {line}"] = status
    report = [f"# mutmut survivors: {name} ({time.time() - start:.0f} s)\n"]
    justified, unjustified = justified_keys(name), []
    per_module: dict[str, dict[str, int]] = {}
    module_of = {dotted(m): m for m in target.modules}
    by_status: dict[str, list[str]] = {}
    for mutant, status in sorted(statuses.items()):
        const = ": " in mutant
        module = mutant.split(": ")[0] if const else module_of[mutant.rsplit(".", 1)[0]]
        row = per_module.setdefault(module, {"mutants": 0, "killed": 0, "justified": 0,
                                             "open": 0})
        row["mutants"] += 1
        by_status.setdefault(status, []).append(mutant)
        if status in KILLED:
            row["killed"] += 1
            continue
        key, diff = (mutant, "") if const else keys[mutant]
        row["justified" if key in justified else "open"] += 1
        if key not in justified:
            unjustified.append(f"{name} {key}")
        report.append(f"## {status}: {mutant}\n\n`{name} {key}`\n\n"
                      + (f"```diff\n{diff.strip()}\n```\n" if diff else "(import-time constant)\n"))
    (work / "survivors.md").write_text("\n".join(report), encoding="utf-8")
    (work / "scores.json").write_text(json.dumps({
        "target": name, "date": time.strftime("%Y-%m-%d"), "commit": tested,
        "command": f"python tools/mutation.py {name}" + (" --survivors" if last else ""),
        "seconds": round(time.time() - start), "modules": per_module, "first": first,
        "statuses": statuses},
        indent=1, ensure_ascii=False), encoding="utf-8")
    counts = ", ".join(f"{s} {len(n)}" for s, n in sorted(by_status.items()))
    print(f"   {name}: {counts} in {time.time() - start:.0f} s; survivors with diffs: "
          f"{(work / 'survivors.md').relative_to(ROOT)}", flush=True)
    print(f"   {name}: {len(unjustified)} survivor(s) not justified in "
          f"{JUSTIFIED.relative_to(ROOT)}" + "".join(f"\n      {u}" for u in unjustified),
          flush=True)
    by_status["not justified"] = unjustified
    return by_status


def commit() -> str:
    """The checkout's commit, ``+`` when it has uncommitted changes."""
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=ROOT, capture_output=True,
                              text=True).stdout.strip()

    return git("rev-parse", "--short", "HEAD") + ("+" if git("status", "--porcelain") else "")


def table() -> str:
    """The per-module table of ``docs/testing.md`` from every target's last ``scores.json``."""
    rows = ["| module | target | mutants | killed on the first run | killed now | justified | "
            "open | date, commit |", "|---|---|---|---|---|---|---|---|"]
    for path in sorted(BUILD.glob("*/scores.json")):
        score = json.loads(path.read_text(encoding="utf-8"))
        for module, c in score["modules"].items():
            first = score.get("first") or score
            was = first.get("modules", {}).get(module)
            was = f"{was['killed']} of {was['mutants']}" if was else first.get("note", "-")
            rows.append(f"| `{module}` | {score['target']} | {c['mutants']} | {was} | "
                        f"{c['killed']} | "
                        f"{c['justified']} | {c['open']} | {score['date']}, "
                        f"{score['commit']} ({score['seconds']} s) |")
    return "\n".join(rows)


def changed_modules(base: str) -> set[str]:
    """Modules (as targets name them) that differ from ``base``, committed or not."""
    def names(*args: str) -> list[str]:
        return subprocess.run(["git", *args], cwd=ROOT, check=True, capture_output=True,
                              text=True).stdout.split()

    files = names("diff", "--name-only", f"{base}...HEAD") + names("diff", "--name-only", "HEAD")
    files += names("ls-files", "--others", "--exclude-standard")
    prefix = f"{PACKAGE}/"
    return {f.removeprefix(prefix) for f in files
            if f.startswith((prefix, "bench/")) and f.endswith(".py")}


def main(argv: list[str] | None = None) -> int:
    """Run the chosen targets; exit 1 if any mutant survived (see docs/testing.md)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("targets", nargs="*", metavar="TARGET",
                        help=f"some of: {', '.join(TARGETS)} (default: all)")
    parser.add_argument("--list", action="store_true", help="show the targets and exit")
    parser.add_argument("--changed", nargs="?", const="main", metavar="BASE",
                        help="only the targets holding a module this branch changed against "
                             "BASE (default main), committed or not")
    parser.add_argument("--survivors", action="store_true",
                        help="run again only the mutants each target's last run did not kill")
    parser.add_argument("--table", action="store_true",
                        help="print the per-module table of docs/testing.md from the last runs")
    parser.add_argument("--max-children", type=int, default=None,
                        help="parallel mutant processes (mutmut's default: CPU count)")
    args = parser.parse_args(argv)
    unknown = [t for t in args.targets if t not in TARGETS]
    if unknown:
        parser.error(f"unknown target(s) {', '.join(unknown)}; choose from: {', '.join(TARGETS)}")
    if args.table:
        print(table())
        return 0
    if args.list:
        for name, t in TARGETS.items():
            print(f"{name}: {' '.join(t.modules)}\n    tests: {' '.join(t.tests)} "
                  f"-k {t.select!r}\n    functions: {' '.join(t.functions)}")
        return 0
    names = args.targets or list(TARGETS)
    if args.changed:
        touched = changed_modules(args.changed)
        names = [n for n in names
                 if touched & set(TARGETS[n].modules + TARGETS[n].constants)]
        print(f"changed against {args.changed}: {', '.join(sorted(touched)) or 'no module'}; "
              f"targets: {', '.join(names) or 'none'}", flush=True)
    survived = unjustified = 0
    for name in names:
        by_status = run_target(name, TARGETS[name], args.max_children, args.survivors)
        unjustified += len(by_status.pop("not justified", []))
        survived += sum(len(v) for k, v in by_status.items() if k not in KILLED)
    print(f"{survived} mutant(s) not killed, {unjustified} of them not justified "
          f"(docs/testing.md, {JUSTIFIED.relative_to(ROOT)})")
    return 1 if unjustified else 0


if __name__ == "__main__":
    sys.exit(main())
