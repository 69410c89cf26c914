"""The targets of ``make mutation``: modules, the tests that guard them, the functions that count.

A module path is relative to the package (``models/bleu.py``) or, for ``bench/``, to the
repository. Function patterns name ``module.function`` or ``module.Class.method``, modules
dotted and relative to the package (``bench.reproduce.fingerprint`` for bench/). ``constants``
targets also mutate the numbers and booleans mutmut cannot reach: module- and class-level
assignments and the arguments of decorators (a recipe's learning rate, a normalisation
constant, a dataclass default); see ``tools/mutation_constants.py``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

#: subprocess tests and whole trainings that cannot kill an in-process mutant (their processes
#: import the unmutated package) but take most of a target's time; tests/test_predict_eval.py
#: is left out of every target for the same reason (its fixture trains every task family)
NOT_IN_PROCESS = ("not killed_sweep and not grid_sweep_runs and not two_train_processes "
                  "and not as_a_user_runs and not console_scripts and not readme_snippet "
                  "and not cli_matches and not ddp")


@dataclass(frozen=True)
class Target:
    """Modules to mutate, the tests that guard them, and which functions count.

    Attributes:
        modules: files to mutate (package-relative, or ``bench/...``).
        tests: test files run against every mutant (only the tests that reach the mutated
            function run, fastest first).
        select: pytest ``-k`` expression within those files.
        functions: ``fnmatch`` patterns of the functions whose mutants are run; default all.
        exclude: patterns of functions left alone among those (a LightningModule's
            ``__init__``: ``save_hyperparameters`` reads its caller's frame, which mutmut's
            trampoline replaces).
        constants: also mutate the module- and class-level numbers of these modules (each
            mutant runs ``tests`` with ``-x`` in its own pytest process).
        constant_select: ``-k`` for the constants' pytest runs (default ``select``).
        debug: run mutmut with ``debug = true`` (no output capture: under mutmut's capture the
            stats run of the ``runs`` target fails, with it off all its tests pass).
    """

    modules: list[str]
    tests: list[str]
    select: str = ""
    functions: list[str] = field(default_factory=lambda: ["*"])
    exclude: list[str] = field(default_factory=list)
    constants: list[str] = field(default_factory=list)
    constant_select: str | None = None
    debug: bool = False


_TASK_INITS = [f"lit_models.{m}.{c}.__init__" for m, c in (
    ("base", "TaskModule"), ("image_classification", "ImageClassificationTask"),
    ("regression", "RegressionTask"))]

TARGETS: dict[str, Target] = {
    # --- issue 18: the code behind the reported numbers ------------------------------------
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
        "or windows or datamodule",
        ["datamodules.loader.*", "datamodules.lm_text._offset",
         "datamodules.lm_text.RandomWindowLoader.*",
         "datamodules.lm_text.SequentialLoader.*", "datamodules.language_model.*",
         "datamodules.time_machine.TimeMachineDataModule.load"]),
    "splits": Target(
        ["datamodules/idx.py", "datamodules/vision.py", "datamodules/fra_eng.py",
         "datamodules/fra_eng_text.py", "datamodules/bert.py", "datamodules/bert_text.py"],
        ["tests/test_data.py", "tests/test_seq2seq.py", "tests/test_bert.py",
         "tests/test_reported_numbers.py", "tests/test_metrics.py"],
        "split or raw_idx or vocabularies or segments or batches_follow or masking or nsp "
        "or redraw or datamodule_shapes or preprocess or translat",
        ["datamodules.idx.*", "datamodules.vision.IDXDataModule.setup",
         "datamodules.fra_eng.EngFraDataModule.setup", "datamodules.fra_eng_text.*",
         "datamodules.bert_text.*"]),
    # --- issue 24: settings ------------------------------------------------------------------
    # the sweep's file checks, grid and random draws, summary order, and its trial loop (with
    # the trial processes recorded: the two tests that train trials take ~30 s a mutant)
    "sweep": Target(
        ["training/sweep.py"],
        ["tests/test_sweep_units.py", "tests/test_sweep_loop.py", "tests/test_sweep_plan.py",
         "tests/test_sweep.py", "tests/test_faults_settings.py"],
        "not grid_sweep_runs and not killed_sweep"),
    # train.py --list [MODEL] and --list-configs
    "listing": Target(
        ["training/listing.py"],
        ["tests/test_listing.py", "tests/test_config.py"], "list"),
    "config": Target(
        ["training/config.py", "training/flags.py"],
        # the in-process tests, not those that train (every config function is called by every
        # training test: a surviving mutant would run them all)
        ["tests/test_config_units.py", "tests/test_config_files.py", "tests/test_flags_units.py",
         "tests/test_flags_help.py", "tests/test_config.py", "tests/test_compat.py",
         "tests/test_faults_settings.py", "tests/test_trainer_surface.py"],
        NOT_IN_PROCESS + " and not every_flag_reaches and not replay_from and not "
        "config_yaml_of_a_run and not three_loggers and not learning_rate_finder and not "
        "val_check_interval_and and not model_checkpoint_options"),
    "checks": Target(
        ["training/checks.py"],
        ["tests/test_checks_units.py"], ""),
    # run folders, resume plans and their refusals
    "runs": Target(
        ["training/runs.py"],
        # the in-process tests only: every training test calls make_run_dir, and with them a
        # surviving mutant of it ran ~60 s (341 mutants: ~80 min on two cores)
        ["tests/test_resume_plan.py", "tests/test_run_folders.py"], "",
        # resuming first (choosing a new run's folder: next session)
        ["training.runs.plan_resume", "training.runs.ResumePlan.*", "training.runs.read_checkpoint",
         "training.runs.same_config", "training.runs.check_arch", "training.runs.make_run_dir",
         "training.runs.remove_partial_files"], debug=True),
    # one writer per run or sweep folder: the flock, the pid it names, a dead holder's lock
    "lock": Target(
        ["training/lock.py"],
        ["tests/test_lock.py", "tests/test_faults_runs.py"], "lock or writer or sweep_in_one"),
    # --- data --------------------------------------------------------------------------------
    # class order, splits, cache invalidation, normalisation statistics
    "image_folder": Target(
        ["datamodules/folder.py", "datamodules/image_folder.py"],
        # (tests/test_predict_eval.py's fixture trains every task family: 14 s a mutant)
        ["tests/test_image_folder.py", "tests/test_image_folder_crop.py", "tests/test_transfer.py",
         "tests/test_faults_data.py"],
        "not fine_tune_on_a_folder "  # 6 s and a process
        "and (folder or image or cache or class or split or transfer or val_size or stat "
        "or mean or corrupt or label)",
        # first the behaviours issue 24 names: class order, splits, cache invalidation,
        # normalisation statistics, the centre crop (the rest of both modules: next session)
        ["datamodules.folder.scan_folder", "datamodules.folder.folder_splits",
         "datamodules.folder.FolderScan.fingerprint", "datamodules.folder._intact",
         "datamodules.folder._to_square", "datamodules.image_folder.ImageFolderDataModule.setup",
         "datamodules.image_folder.ImageFolderDataModule.data_info"]),
    "text": Target(
        ["datamodules/text.py"],
        ["tests/test_text_units.py", "tests/test_text.py"], ""),
    "download": Target(
        ["datamodules/download.py"],
        # the in-process tests (a stub network; two tests of test_faults_io.py wait on silent
        # sockets for seconds)
        ["tests/test_download_units.py", "tests/test_download_files.py"], ""),
    # --- models and their services ---------------------------------------------------------
    # key mapping, head replacement, freezing, parameter groups, preprocessing constants
    "transfer": Target(
        ["models/transfer.py"],
        ["tests/test_transfer_units.py", "tests/test_transfer_groups.py", "tests/test_transfer.py",
         "tests/test_faults_models.py"],
        "not fine_tune_on_a_folder",
        ["models.transfer.map_torchvision_resnet", "models.transfer.apply_initial_weights",
         "models.transfer.param_groups", "models.transfer.matches", "models.transfer.head_*",
         "models.transfer.freeze", "models.transfer.frozen_norm_layers"],
        constants=["models/transfer.py"]),
    # the images and token batches a model sees, in training and in plain-PyTorch inference
    "preprocess": Target(
        ["models/preprocess.py"],
        ["tests/test_preprocess_units.py"], "", constants=["models/preprocess.py"]),
    "export": Target(
        ["models/export.py"],
        ["tests/test_export_units.py", "tests/test_export_fields.py",
         "tests/test_faults_export.py"],
        "test_export_units or test_export_fields or text_export",
        constants=["models/export.py"]),
    "mamba": Target(
        ["models/mamba.py", "models/selective_scan.py"],
        ["tests/test_mamba.py", "tests/test_model_options.py"], "mamba or scan",
        constants=["models/mamba.py"]),
    "layers": Target(
        ["models/attention.py", "models/rnn.py"],
        ["tests/test_attention_units.py", "tests/test_rnn_units.py", "tests/test_attention.py",
         "tests/test_lm_models.py"], "not overfits", constants=["models/rnn.py"]),
    # the registry and every recipe's numbers (the decorators of the model files)
    "registry": Target(
        ["models/registry.py"],
        ["tests/test_book_settings.py", "tests/test_listing.py", "tests/test_models.py",
         "tests/test_config.py", "tests/test_cnn_zoo.py", "tests/test_mamba.py"],
        "recipe or registry or list or spec",
        constants=["models/lenet.py", "models/mlp.py", "models/linear.py", "models/alexnet.py",
                   "models/vgg.py", "models/nin.py", "models/googlenet.py", "models/resnet.py",
                   "models/densenet.py", "models/rnn.py", "models/seq2seq.py",
                   "models/transformer.py", "models/gpt.py", "models/bert.py",
                   "models/attention_classifiers.py", "models/mamba.py"],
        constant_select="recipe or book or registry or spec or shipped_configs"),
    # --- training: optimizers, schedulers, sums, resume state, every task module -------------
    "tasks": Target(
        ["lit_models/base.py", "lit_models/image_classification.py", "lit_models/regression.py"],
        # the hooks called directly, and the in-process cases of the older files
        ["tests/test_task_units.py", "tests/test_task_steps.py", "tests/test_fused.py",
         "tests/test_transfer.py", "tests/test_training.py", "tests/test_metrics.py"],
        "test_task_units or test_task_steps or test_fused or (test_transfer and "
        "(frozen_parameters or lr_mult or torchvision_init_repeats or train_and_eval_views)) "
        "or (test_training and (gradient_norm or checkpoints_of_the_flat)) "
        "or (test_metrics and step_train_loss)",
        exclude=_TASK_INITS + [  # the metrics target's
            "lit_models.base.TaskModule.configure_optimizers",
            "lit_models.base.TaskModule._accumulate_train",
            "lit_models.base.TaskModule.on_train_epoch_end"]),
    # --- callbacks ---------------------------------------------------------------------------
    # the non-finite and divergence guards, the sample count and the clock
    "monitoring": Target(
        ["callbacks/monitoring.py"],
        ["tests/test_monitoring.py", "tests/test_faults.py", "tests/test_faults_runs.py"],
        "monitor or non_finite or nan or diverg or checkpoint_with or last_good or whole_runs"),
    "faults": Target(
        ["callbacks/faults.py", "callbacks/csv_logger.py", "callbacks/export.py"],
        # the in-process tests (the training runs of tests/test_faults*.py call every hook)
        ["tests/test_fault_callbacks.py", "tests/test_signal_fits.py",
         "tests/test_csv_and_export_callbacks.py"], "", debug=True),
    # the numbers a run prints: rates, ETA after a resume
    "progress": Target(
        ["callbacks/progress.py"],
        ["tests/test_progress.py", "tests/test_console_and_plots.py", "tests/test_config.py",
         "tests/test_resume.py"],
        "progress or console or eta or rate or line or bar", constants=["callbacks/progress.py"]),
    # --- bench: budget accounting, fingerprints, skip rules ---------------------------------
    "reproduce": Target(
        ["bench/reproduce.py", "bench/tables.py"],
        ["tests/test_reproduce_units.py", "tests/test_reproduce_rows.py",
         "tests/test_tables_units.py", "tests/test_reproduce.py"],
        "test_reproduce_units or test_reproduce_rows or test_tables_units or data_dir "
        "or every_row or committed or refused", constants=["bench/reproduce.py"]),
}
