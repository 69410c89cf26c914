"""Mutation testing of the code behind the reported numbers (``make mutation``; not in CI).

Each target pairs modules with the test files (and a ``-k`` selection) that guard them, so one
target takes minutes. For each target the checkout is copied to ``build/mutation/TARGET/``,
mutmut (https://github.com/boxed/mutmut, 3.x) is configured there and run, and every mutant
that is not killed is printed with its diff and written to ``build/mutation/TARGET/survivors.md``.
``docs/testing.md`` records, per module, which survivors remain and why each is harmless;
``tools/mutation-justified.txt`` lists them by function and mutated line, and a run fails
(exit 1) only on a survivor that is not in that list, printing it.

mutmut skips decorated functions (it cannot place its trampoline under a decorator). In the
copy, and only there, ``@torch.no_grad()`` above a function is rewritten as the equivalent
``name = torch.no_grad()(name)`` after it, so ``greedy_decode`` and ``beam_search`` are mutated.

Usage::

    python tools/mutation.py                # every target
    python tools/mutation.py bleu decoding  # some
    python tools/mutation.py --list         # the targets, their modules and tests
"""

from __future__ import annotations

import argparse
import ast
import fnmatch
import os
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BUILD = ROOT / "build" / "mutation"
JUSTIFIED = ROOT / "tools" / "mutation-justified.txt"
#: the package whose modules are mutated; targets name modules relative to it
PACKAGE = "d2l_lightning"


@dataclass(frozen=True)
class Target:
    """Modules to mutate, the tests that guard them, and which functions count.

    Attributes:
        modules: files to mutate, relative to the package (``models/bleu.py``).
        tests: test files run against every mutant (only the tests that reach the mutated
            function run, fastest first).
        select: pytest ``-k`` expression within those files.
        functions: ``fnmatch`` patterns of the functions (``module.function`` or
            ``module.Class.method``, modules relative to the package) whose mutants are run;
            default all.
        exclude: patterns of functions left alone among those (a LightningModule's
            ``__init__``: ``save_hyperparameters`` reads its caller's frame, which mutmut's
            trampoline replaces).
    """

    modules: list[str]
    tests: list[str]
    select: str = ""
    functions: list[str] = field(default_factory=lambda: ["*"])
    exclude: list[str] = field(default_factory=list)


TARGETS: dict[str, Target] = {
    "bleu": Target(
        ["models/bleu.py"],
        ["tests/test_reported_numbers.py", "tests/test_seq2seq.py"],
        "(bleu or brevity) and not fit_logs"),
    "decoding": Target(
        ["models/decoding.py"],
        ["tests/test_decoding.py", "tests/test_reported_numbers.py", "tests/test_seq2seq.py",
         "tests/test_model_options.py"],
        "beam or greedy or padding or decod or (eval_mode and (seq2seq or transformer_mt))"),
    "generate": Target(
        ["models/generate.py"],
        ["tests/test_generation.py", "tests/test_lm_models.py", "tests/test_reported_numbers.py"],
        "generat or sampl or bidirectional or gpt"),
    # the metric code of the task modules: losses, accuracies, perplexities, BLEU plumbing,
    # epoch sums and the learning-rate schedules
    "metrics": Target(
        ["lit_models/base.py", "lit_models/translation.py", "lit_models/language_modeling.py",
         "lit_models/masked_lm.py", "models/bert.py"],
        ["tests/test_reported_numbers.py", "tests/test_seq2seq.py",
         "tests/test_language_modeling.py", "tests/test_bert.py", "tests/test_metrics.py"],
        "val_acc or schedule or loss_ignores or perplexity or uniform or carried or padded "
        "or unigram or metric",
        ["lit_models.base.TaskModule.configure_optimizers",
         "lit_models.base.TaskModule._accumulate_train",
         "lit_models.base.TaskModule.on_train_epoch_end",
         "lit_models.translation.TranslationTask.*",
         "lit_models.language_modeling.LanguageModelingTask._*",
         "lit_models.language_modeling.LanguageModelingTask.*_step",
         "lit_models.language_modeling.LanguageModelingTask.on_*_epoch_*",
         "lit_models.masked_lm.MaskedLMTask.*", "models.bert.bert_losses"],
        ["lit_models.translation.TranslationTask.__init__",
         "lit_models.language_modeling.LanguageModelingTask.__init__",
         "lit_models.masked_lm.MaskedLMTask.__init__",
         "lit_models.translation.TranslationTask.export_config",
         "lit_models.translation.TranslationTask.configure_callbacks",
         "lit_models.masked_lm.MaskedLMTask.export_config",
         "lit_models.masked_lm.MaskedLMTask.extra_exports"]),
    "samplers": Target(
        ["datamodules/loader.py", "datamodules/lm_text.py", "datamodules/language_model.py",
         "datamodules/time_machine.py"],
        ["tests/test_samplers.py", "tests/test_data.py", "tests/test_language_modeling.py"],
        "sampler or loader or sequential or random or resume or held_out or max_tokens "
        "or windows",
        ["datamodules.loader.*", "datamodules.lm_text._offset",
         "datamodules.lm_text.RandomWindowLoader.*",
         "datamodules.lm_text.SequentialLoader.*",
         "datamodules.language_model.LanguageModelDataModule.*_dataloader",
         "datamodules.time_machine.TimeMachineDataModule.load"]),
    "splits": Target(
        ["datamodules/idx.py", "datamodules/vision.py", "datamodules/fra_eng.py",
         "datamodules/fra_eng_text.py", "datamodules/bert.py", "datamodules/bert_text.py"],
        ["tests/test_data.py", "tests/test_seq2seq.py", "tests/test_bert.py",
         "tests/test_reported_numbers.py", "tests/test_metrics.py"],
        "split or raw_idx or vocabularies or segments or batches_follow or masking or nsp "
        "or redraw or datamodule_shapes or preprocess or translat",
        ["datamodules.idx.split_indices", "datamodules.idx.default_val_size",
         "datamodules.idx.load_split", "datamodules.vision.IDXDataModule.setup",
         "datamodules.fra_eng.EngFraDataModule.setup", "datamodules.fra_eng_text.*",
         "datamodules.bert_text.make_examples", "datamodules.bert_text.PretrainCorpus.*"]),
    # the sweep's file checks, grid and random draws, summary order, and its trial loop (with
    # the trial processes recorded: the two tests that train trials take ~30 s a mutant)
    "sweep": Target(
        ["training/sweep.py"],
        ["tests/test_sweep_plan.py", "tests/test_sweep.py"],
        "not grid_sweep_runs and not killed_sweep"),
    # train.py --list [MODEL] and --list-configs
    "listing": Target(
        ["training/listing.py"],
        ["tests/test_listing.py", "tests/test_config.py"], "list"),
    # the non-finite and divergence guards, the sample count and the clock
    "monitoring": Target(
        ["callbacks/monitoring.py"],
        ["tests/test_monitoring.py", "tests/test_faults.py", "tests/test_faults_runs.py"],
        "monitor or non_finite or nan or diverg or checkpoint_with or last_good or whole_runs"),
    # one writer per run or sweep folder: the flock, the pid it names, a dead holder's lock
    "lock": Target(
        ["training/lock.py"],
        ["tests/test_lock.py", "tests/test_faults_runs.py"], "lock or writer or sweep_in_one"),
}


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


def undecorate_no_grad(path: Path) -> int:
    """Rewrite ``@torch.no_grad()`` on functions as an assignment after them; count them."""
    lines = path.read_text().splitlines(keepends=True)
    edits = []
    for node in ast.walk(ast.parse("".join(lines))):
        if not isinstance(node, ast.FunctionDef):
            continue
        for dec in node.decorator_list:
            if ast.unparse(dec) == "torch.no_grad()":
                indent = " " * node.col_offset
                edits.append((node.end_lineno, dec.lineno,
                              f"{indent}{node.name} = torch.no_grad()({node.name})\n"))
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
    others = ["train.py", "predict.py", "export.py", "bench/"]
    pytest_args = ["-p", "no:cacheprovider", "-W", "ignore"]
    if target.select:
        pytest_args += ["-k", target.select]
    quoted = ", ".join(f'"{a}"' for a in pytest_args)
    return "\n".join([
        "", "[tool.mutmut]",
        f'source_paths = ["{PACKAGE}/"]',
        f"only_mutate = {[f'{PACKAGE}/{m}' for m in target.modules]!r}".replace("'", '"'),
        f"also_copy = {others!r}".replace("'", '"'),
        f"pytest_add_cli_args_test_selection = {target.tests!r}".replace("'", '"'),
        f"pytest_add_cli_args = [{quoted}]",
        'process_isolation = "forkserver"',  # torch is not fork-safe after it has run
        "use_git_change_detection = false",
        "timeout_multiplier = 5.0", "timeout_constant = 20.0", ""])


def mutant_patterns(target: Target, functions: list[str] | None = None) -> list[str]:
    """The names mutmut gives the selected functions' mutants (``module.x_fn__mutmut_N``)."""
    out = []
    for pattern in target.functions if functions is None else functions:
        if pattern == "*":
            out += [f"{PACKAGE}." + m[:-3].replace("/", ".") + ".*" for m in target.modules]
            continue
        if pattern.endswith(".*") and not pattern.split(".")[-2][:1].isupper():
            out.append(f"{PACKAGE}.{pattern}")  # a whole module: functions and methods
            continue
        parts = pattern.split(".")
        owner = [p for p in parts[:-1] if p[:1].isupper()]
        module = ".".join(parts[:-1 - len(owner)])
        name = "x" + "".join(f"ǁ{c}ǁ" for c in owner) + ("" if owner else "_") + parts[-1]
        out.append(f"{PACKAGE}.{module}.{name}__mutmut_*")
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


def run_target(name: str, target: Target, max_children: int | None) -> dict[str, list[str]]:
    """Mutate one target; return mutant names by status (killed mutants not listed)."""
    work = BUILD / name
    copy_checkout(work)
    shimmed = sum(undecorate_no_grad(work / PACKAGE / m) for m in target.modules)
    patterns = mutant_patterns(target)
    exclude = mutant_patterns(target, target.exclude)
    for m in target.modules:
        skip_unselected(work / PACKAGE / m, f"{PACKAGE}." + m[:-3].replace("/", "."), patterns,
                        exclude)
    with open(work / "pyproject.toml", "a", encoding="utf-8") as f:
        f.write(mutmut_config(target))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "D2L_DATA_DIR": "", "WANDB_MODE": "disabled",
           "PYTHONWARNINGS": "ignore"}
    cmd = [sys.executable, "-m", "mutmut", "run", *patterns]
    if max_children:
        cmd[4:4] = ["--max-children", str(max_children)]
    start = time.time()
    print(f"== {name}: {', '.join(target.modules)} ({shimmed} @torch.no_grad() unwrapped); "
          f"tests {' '.join(target.tests)} -k {target.select!r}", flush=True)
    with open(work / "mutmut-run.log", "w") as log:
        rc = subprocess.run(cmd, cwd=work, env=env, stdout=log, stderr=subprocess.STDOUT)
    if rc.returncode:
        tail = (work / "mutmut-run.log").read_text(errors="replace").replace("\r", "\n")
        print(f"   {name}: mutmut failed (exit {rc.returncode}); the end of "
              f"{(work / 'mutmut-run.log').relative_to(ROOT)}:\n{tail[-1500:]}", flush=True)
        return {"mutmut failed": [name], "not justified": [f"{name} (mutmut failed)"]}
    out = subprocess.run([sys.executable, "-m", "mutmut", "results", "--all", "true"], cwd=work,
                         env=env, capture_output=True, text=True).stdout
    by_status: dict[str, list[str]] = {}
    for line in out.splitlines():
        m = re.match(r"\s+(\S+): (.+)$", line)
        if m and any(fnmatch.fnmatch(m.group(1), p) for p in patterns):
            by_status.setdefault(m.group(2), []).append(m.group(1))
    report = [f"# mutmut survivors: {name} ({time.time() - start:.0f} s)\n"]
    justified, unjustified = justified_keys(name), []
    for status, names in sorted(by_status.items()):
        if status in ("killed", "not checked"):
            continue
        for mutant in names:
            diff = subprocess.run([sys.executable, "-m", "mutmut", "show", mutant], cwd=work,
                                  env=env, capture_output=True, text=True).stdout
            key = survivor_key(mutant, diff)
            if key not in justified:
                unjustified.append(f"{name} {key}")
            report.append(f"## {status}: {mutant}\n\n`{name} {key}`\n\n"
                          f"```diff\n{diff.strip()}\n```\n")
    (work / "survivors.md").write_text("\n".join(report), encoding="utf-8")
    counts = ", ".join(f"{s} {len(n)}" for s, n in sorted(by_status.items()))
    print(f"   {name}: {counts} in {time.time() - start:.0f} s; survivors with diffs: "
          f"{(work / 'survivors.md').relative_to(ROOT)}", flush=True)
    print(f"   {name}: {len(unjustified)} survivor(s) not justified in "
          f"{JUSTIFIED.relative_to(ROOT)}" + "".join(f"\n      {u}" for u in unjustified),
          flush=True)
    by_status["not justified"] = unjustified
    return by_status


def changed_modules(base: str) -> set[str]:
    """Modules of the package (relative to it) that differ from ``base``, committed or not."""
    def names(*args: str) -> list[str]:
        return subprocess.run(["git", *args], cwd=ROOT, check=True, capture_output=True,
                              text=True).stdout.split()

    files = names("diff", "--name-only", f"{base}...HEAD") + names("diff", "--name-only", "HEAD")
    files += names("ls-files", "--others", "--exclude-standard")
    prefix = f"{PACKAGE}/"
    return {f[len(prefix):] for f in files if f.startswith(prefix) and f.endswith(".py")}


def main(argv: list[str] | None = None) -> int:
    """Run the chosen targets; exit 1 if any mutant survived (see docs/testing.md)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("targets", nargs="*", metavar="TARGET",
                        help=f"some of: {', '.join(TARGETS)} (default: all)")
    parser.add_argument("--list", action="store_true", help="show the targets and exit")
    parser.add_argument("--changed", nargs="?", const="main", metavar="BASE",
                        help="only the targets holding a module this branch changed against "
                             "BASE (default main), committed or not")
    parser.add_argument("--max-children", type=int, default=None,
                        help="parallel mutant processes (mutmut's default: CPU count)")
    args = parser.parse_args(argv)
    unknown = [t for t in args.targets if t not in TARGETS]
    if unknown:
        parser.error(f"unknown target(s) {', '.join(unknown)}; choose from: {', '.join(TARGETS)}")
    if args.list:
        for name, t in TARGETS.items():
            print(f"{name}: {' '.join(t.modules)}\n    tests: {' '.join(t.tests)} "
                  f"-k {t.select!r}\n    functions: {' '.join(t.functions)}")
        return 0
    names = args.targets or list(TARGETS)
    if args.changed:
        touched = changed_modules(args.changed)
        names = [n for n in names if touched & set(TARGETS[n].modules)]
        print(f"changed against {args.changed}: {', '.join(sorted(touched)) or 'no module'}; "
              f"targets: {', '.join(names) or 'none'}", flush=True)
    survived = unjustified = 0
    for name in names:
        by_status = run_target(name, TARGETS[name], args.max_children)
        unjustified += len(by_status.pop("not justified", []))
        survived += sum(len(v) for k, v in by_status.items() if k != "killed")
    print(f"{survived} mutant(s) not killed, {unjustified} of them not justified "
          f"(docs/testing.md, {JUSTIFIED.relative_to(ROOT)})")
    return 1 if unjustified else 0


if __name__ == "__main__":
    sys.exit(main())
