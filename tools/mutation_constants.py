"""Mutants of the numbers mutmut cannot reach (``make mutation``; not in CI).

mutmut mutates function bodies and default arguments, through a trampoline chosen when a
function is called; code that runs at import (a recipe in a ``@register(...)`` decorator, a
normalisation constant, a dataclass field's default) is never mutated. Here each int or float
literal outside function bodies becomes ``n + 1`` (mutmut's own number mutation) and each
``True``/``False`` flips; per mutant the module is rewritten in a copy of the checkout and the
target's tests run in a fresh ``pytest -x`` process (``workers`` at a time). A mutant is killed
when that run fails; a clean run of the same tests must pass first.
"""

from __future__ import annotations

import ast
import os
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Site:
    """One mutable literal: where it is, and the line as the mutant spells it."""

    line: int  # 1-based
    col: int
    end_col: int
    new: str
    mutated_line: str


def _skip_docstring(body: list[ast.stmt]) -> list[ast.stmt]:
    first = body[0] if body else None
    if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
        return body[1:]
    return body


def _literals(node: ast.AST) -> list[ast.Constant]:
    """Number and boolean literals in the import-time code under ``node``."""
    out: list[ast.Constant] = []
    for stmt in _skip_docstring(getattr(node, "body", [])):
        if isinstance(stmt, (ast.FunctionDef, ast.AsyncFunctionDef)):
            for dec in stmt.decorator_list:  # defaults are mutmut's; decorators run at import
                out += [n for n in ast.walk(dec) if isinstance(n, ast.Constant)]
        elif isinstance(stmt, ast.ClassDef):
            for dec in stmt.decorator_list:
                out += [n for n in ast.walk(dec) if isinstance(n, ast.Constant)]
            out += _literals(stmt)
        elif isinstance(stmt, (ast.If, ast.Try, ast.With)):
            out += _literals(stmt)
        elif not isinstance(stmt, (ast.Import, ast.ImportFrom)):
            out += [n for n in ast.walk(stmt) if isinstance(n, ast.Constant)]
    return [n for n in out if type(n.value) in (int, float, bool)]


def sites(text: str) -> list[Site]:
    """Every mutant of one module's import-time numbers, in source order."""
    lines = text.splitlines()
    found = []
    for node in sorted(_literals(ast.parse(text)), key=lambda n: (n.lineno, n.col_offset)):
        if node.lineno != node.end_lineno:
            continue
        value = node.value
        new = repr(not value) if isinstance(value, bool) else repr(value + 1)
        line = lines[node.lineno - 1]
        mutated = line[:node.col_offset] + new + line[node.end_col_offset:]
        found.append(Site(node.lineno, node.col_offset, node.end_col_offset, new,
                          mutated.strip()))
    return found


def apply(text: str, site: Site) -> str:
    """``text`` with one site mutated."""
    lines = text.splitlines(keepends=True)
    line = lines[site.line - 1]
    lines[site.line - 1] = line[:site.col] + site.new + line[site.end_col:]
    return "".join(lines)


def _pytest(work: Path, tests: list[str], select: str, timeout: float) -> int:
    cmd = [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", "-W", "ignore",
           "-o", "addopts=", "-m", "not slow", *tests]
    if select:
        cmd += ["-k", select]
    env = {**os.environ, "PYTHONPATH": str(work), "OMP_NUM_THREADS": "1", "D2L_DATA_DIR": "",
           "WANDB_MODE": "disabled", "PYTHONWARNINGS": "ignore",
           "PYTHONDONTWRITEBYTECODE": "1"}  # a mutant and its restore can share size and mtime
    try:
        return subprocess.run(cmd, cwd=work, env=env, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL, timeout=timeout).returncode
    except subprocess.TimeoutExpired:
        return -1


def run_constants(work: Path, modules: list[str], tests: list[str], select: str,
                  workers: int = 2, only: set[str] | None = None) -> list[tuple[str, str, str]]:
    """Mutate the import-time numbers of ``modules`` (paths from the repository root).

    Returns ``(module, mutated line, status)``, status killed, survived or timeout; with
    ``only``, just the mutants whose ``module: line`` (package prefix dropped) is in it.
    """
    copies = []
    for i in range(workers):
        dest = work.parent / f"{work.name}-constants{i}"
        if dest.exists():
            shutil.rmtree(dest)
        shutil.copytree(work, dest, ignore=shutil.ignore_patterns("mutants", "__pycache__"))
        copies.append(dest)
    probe = subprocess.run([sys.executable, "-c", "import d2l_lightning as p; print(p.__file__)"],
                           cwd=copies[0], env={**os.environ, "PYTHONPATH": str(copies[0])},
                           capture_output=True, text=True).stdout.strip()
    if not probe.startswith(str(copies[0])):
        raise RuntimeError(f"the copy's package is not the one imported ({probe})")
    t0 = time.time()
    if _pytest(copies[0], tests, select, timeout=1800):
        raise RuntimeError(f"the constants' tests fail unmutated: {tests} -k {select!r}")
    clean_s = time.time() - t0
    jobs = [(m, s) for m in modules for s in sites((work / m).read_text(encoding="utf-8"))
            if only is None or f"{m.removeprefix('d2l_lightning/')}: {s.mutated_line}" in only]
    if not jobs:
        return []
    free = list(copies)
    results: list[tuple[str, str, str]] = [("", "", "")] * len(jobs)

    def one(i: int) -> None:
        module, site = jobs[i]
        dest = free.pop()
        path = dest / module
        original = path.read_text(encoding="utf-8")
        try:
            path.write_text(apply(original, site), encoding="utf-8")
            rc = _pytest(dest, tests, select, timeout=3 * clean_s + 30)
        finally:
            path.write_text(original, encoding="utf-8")
            free.append(dest)
        status = "timeout" if rc == -1 else "survived" if rc == 0 else "killed"
        results[i] = (module, site.mutated_line, status)

    with ThreadPoolExecutor(workers) as pool:
        list(pool.map(one, range(len(jobs))))
    return results
