"""Inference from an export folder with plain PyTorch (this file never imports Lightning).

Examples:
    python predict.py classify --export runs/RUN/export shoe.png shirt.png --top-k 3
    python predict.py classify --export runs/RUN/export t10k-images-idx3-ubyte.gz --limit 5
    python predict.py classify --export runs/RUN/export --eval --data fashion_mnist --split test
    python predict.py translate --export runs/RUN/export "I'm home." "He's calm." --beam-size 4
    python predict.py fill-mask --export runs/RUN/export "the time <mask> was invented ."
    python predict.py embed --export runs/RUN/export/encoder "a sentence ." "a second one ."
    python predict.py generate --export runs/RUN/export --prefix "time traveller" --num-tokens 100
    python predict.py eval --export runs/RUN/export --split test   # any task: beside results.json
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from d2l_lightning.datamodules.download import DataError

if TYPE_CHECKING:
    import torch

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg"}
#: the keys of ``datamodules.idx.IDX_DATASETS`` (a test checks), so that ``--help`` imports
#: no torch
IDX_DATA = ("fashion_mnist", "mnist")
MAX_BATCH_VALUES = 2**27  #: most floats of one preprocessed batch (512 MB; large images: fewer)
#: what each task's commands read from config.json
REQUIRED = {"image_classification": ("preprocess", "class_names"),
            "seq2seq": ("preprocess", "src_vocab", "tgt_vocab", "num_steps", "max_decode_len"),
            "masked_lm": ("vocab", "max_len"), "text_encoding": ("vocab", "max_len"),
            "language_modeling": ("vocab", "text")}


def _number(kind: type, low: float, what: str):
    """An argparse type: a finite ``kind`` of at least ``low`` (one sentence otherwise)."""
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
        if not math.isfinite(value) or value < low:
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}")
        return value
    parse.__name__ = kind.__name__
    return parse


COUNT = _number(int, 1, "a whole number of at least 1")
COUNT0 = _number(int, 0, "a whole number, 0 or more")
FLOAT0 = _number(float, 0, "a finite number, 0 or more")
FLOAT = _number(float, -math.inf, "a finite number")


def require(config: dict, export: str) -> None:
    """Refuse a config.json that lacks what its task's command reads."""
    from d2l_lightning.models import ExportError

    task = config.get("task")
    missing = [k for k in REQUIRED.get(task, ()) if k not in config]
    if missing:
        raise ExportError(f"{Path(export) / 'config.json'} of a '{task}' model lacks "
                          f"{', '.join(missing)}; re-export it with export.py")
    pre = config.get("preprocess")
    if task == "image_classification" and not (isinstance(pre, dict) and {
            "mean", "std", "resize", "image_size", "in_channels"} <= pre.keys()):
        raise ExportError(f"{Path(export) / 'config.json'}: 'preprocess' must hold mean, std, "
                          "resize, image_size and in_channels; re-export it with export.py")
    if task == "language_modeling":
        from d2l_lightning.datamodules.text import TEXT_PREPROCESSORS as KNOWN

        if not isinstance(config["text"], dict) or config["text"].get("preprocess") not in KNOWN:
            raise ExportError(f"{Path(export) / 'config.json'}: 'text.preprocess' must be one "
                              f"of {', '.join(KNOWN)}; re-export it with export.py")


def load_images(paths: list[str], config: dict) -> tuple[torch.Tensor, list[str]]:
    """Read PNG/JPEG files or IDX image files into a uint8 ``(N, C, H, W)`` batch."""
    import torch

    from d2l_lightning.datamodules.idx import read_idx
    from d2l_lightning.models import fit_image

    pre = config["preprocess"]
    size, channels = pre["image_size"], pre["in_channels"]
    batches, names = [], []
    for p in paths:
        path = Path(p)
        if not path.is_file():
            raise DataError(f"input file {path} does not exist")
        if path.suffix.lower() in IMAGE_SUFFIXES:
            from torchvision.io import ImageReadMode, decode_image, read_file

            mode = ImageReadMode.GRAY if channels == 1 else ImageReadMode.RGB
            try:
                img = decode_image(read_file(str(path)), mode=mode)  # (C, H, W) uint8
            except RuntimeError as e:
                raise DataError(f"cannot decode image {path} ({e})") from None
            batches.append(fit_image(img, size, channels)[None])  # the training data's size
            names.append(str(path))
        else:
            arr = read_idx(path)
            if arr.dim() != 3:
                raise DataError(f"{path} holds shape {tuple(arr.shape)}, not (N, H, W) images")
            if tuple(arr.shape[1:]) == (size, size) and channels == 1:
                batches.append(arr[:, None])  # (N, H, W) -> (N, 1, H, W)
            else:  # another size or an RGB model: each image as the training data was
                batches.append(torch.stack([fit_image(im, size, channels) for im in arr]))
            names += [f"{path}#{i}" for i in range(len(arr))]
    return torch.cat(batches), names


def classify_logits(model: torch.nn.Module, config: dict, images: torch.Tensor,
                    batch_size: int = 512, device: str = "cpu") -> torch.Tensor:
    """Logits for uint8 images, preprocessed exactly as in training."""
    import torch

    from d2l_lightning.models import preprocess_images

    pre = config["preprocess"]
    side = pre["resize"] or max(images.shape[-2:], default=1)
    values = (pre.get("channels") or images.shape[1]) * side * side  # of one preprocessed image
    batch_size = max(1, min(batch_size, MAX_BATCH_VALUES // values))
    out = []
    for i in range(0, len(images), batch_size):
        x = preprocess_images(images[i:i + batch_size].to(device), pre["mean"], pre["std"],
                              pre["resize"], channels=pre.get("channels"),
                              center_crop=pre.get("center_crop"))
        with torch.no_grad():
            out.append(model(x).float().cpu())
    return torch.cat(out) if out else torch.empty(0, len(config["class_names"]))


def cmd_classify(args: argparse.Namespace) -> int:
    """``classify``: top-k labels for files, or accuracy on a dataset split."""
    from d2l_lightning.datamodules.idx import IDX_DATASETS, load_split
    from d2l_lightning.models import ExportError, load_exported

    model, config = load_exported(args.export, map_location=args.device)
    if config.get("task") != "image_classification":
        raise ExportError(f"{args.export} holds a '{config.get('task')}' model, "
                          "not an image classifier")
    require(config, args.export)
    names = config["class_names"]
    if args.eval:
        if args.data not in IDX_DATASETS:
            raise DataError(f"--eval needs --data, one of: {', '.join(IDX_DATASETS)}")
        images, labels = load_split(IDX_DATASETS[args.data], args.data_dir, args.split,
                                    args.seed, args.val_size, args.data_setting)
        logits = classify_logits(model, config, images, args.batch_size, args.device)
        acc = (logits.argmax(-1) == labels).float().mean().item()
        print(f"accuracy on {args.data} {args.split} ({len(labels)} images): {acc:.4f}")
        return 0
    if not args.inputs:
        raise DataError("give image files (PNG/JPEG or IDX), or --eval")
    images, paths = load_images(args.inputs, config)
    if args.limit:
        images, paths = images[: args.limit], paths[: args.limit]
    probs = classify_logits(model, config, images, args.batch_size, args.device).softmax(-1)
    top = probs.topk(min(args.top_k, probs.shape[-1]), dim=-1)
    for path, p, idx in zip(paths, top.values.tolist(), top.indices.tolist()):
        print(f"{path}: " + ", ".join(f"{names[i]} ({q:.3f})" for q, i in zip(p, idx)))
    return 0


def cmd_translate(args: argparse.Namespace) -> int:
    """``translate``: English sentences to French, preprocessed exactly as in training."""
    from d2l_lightning.datamodules.fra_eng_text import PREPROCESS, translate
    from d2l_lightning.datamodules.text import Vocab
    from d2l_lightning.models import ExportError, load_exported

    model, config = load_exported(args.export, map_location=args.device)
    if config.get("task") != "seq2seq":
        raise ExportError(f"{args.export} holds a '{config.get('task')}' model, "
                          "not a translation model")
    require(config, args.export)
    if config.get("preprocess") != PREPROCESS:
        raise ExportError(f"{args.export}: unknown preprocessing '{config.get('preprocess')}'")
    from d2l_lightning.datamodules.fra_eng_text import preprocess_fra_eng, tokenize_sentence

    if not args.sentences:
        raise DataError("give one or more English sentences to translate")
    for i, sentence in enumerate(args.sentences, 1):
        words = tokenize_sentence(preprocess_fra_eng(sentence))
        if not words:
            raise DataError(f"sentence {i} ({sentence!r}) holds no word to translate")
        if len(words) + 1 > config["num_steps"]:  # + <eos>, as encode_source cuts it
            print(f"warning: sentence {i} has {len(words)} tokens; the model reads only the "
                  f"first {config['num_steps'] - 1} (its training length)", file=sys.stderr)
    beam = args.beam_size if args.beam_size is not None else config.get("beam_size", 1)
    alpha = (args.length_penalty if args.length_penalty is not None
             else config.get("length_penalty", 0.0))
    texts = translate(model, args.sentences, Vocab.from_tokens(config["src_vocab"]),
                      Vocab.from_tokens(config["tgt_vocab"]), config["num_steps"],
                      args.max_len or config["max_decode_len"], beam, alpha)
    for sentence, text in zip(args.sentences, texts):
        print(f"{sentence} => {text}")
    return 0


def _bert_words(text: str | None, config: dict) -> list[str] | None:
    """Word tokens as in pretraining (lower-cased, split on whitespace)."""
    if text is None:
        return None
    return (text.lower() if config.get("lowercase", True) else text).split()


def cmd_fill_mask(args: argparse.Namespace) -> int:
    """``fill-mask``: the top-k tokens at each ``<mask>`` of a sentence (or pair)."""
    from d2l_lightning.models import ExportError, load_exported
    from d2l_lightning.models.bert import fill_mask

    model, config = load_exported(args.export, map_location=args.device)
    if config.get("task") != "masked_lm":
        raise ExportError(f"{args.export} holds a '{config.get('task')}' model, not a masked "
                          "language model (use the export folder, not export/encoder)")
    require(config, args.export)
    try:
        results = fill_mask(model, config["vocab"], _bert_words(args.text, config),
                            _bert_words(args.second, config), args.top_k, config["max_len"])
    except ValueError as e:
        raise DataError(str(e)) from None
    for pos, preds in results:
        print(f"<mask> at {pos}: " + ", ".join(f"{t} ({p:.3f})" for t, p in preds))
    return 0


def cmd_embed(args: argparse.Namespace) -> int:
    """``embed``: the ``<cls>`` and token encodings of a sentence or pair (BERT encoder)."""
    import torch

    from d2l_lightning.models import ExportError, load_exported
    from d2l_lightning.models.bert import encode_bert_input

    model, config = load_exported(args.export, map_location=args.device)
    task = config.get("task")
    if task not in ("masked_lm", "text_encoding"):
        raise ExportError(f"{args.export} holds a '{task}' model, not a BERT (encoder)")
    require(config, args.export)
    encoder = model.encoder if task == "masked_lm" else model
    token_to_idx = {t: i for i, t in enumerate(config["vocab"])}
    try:
        ids, segments, valid_lens, tokens = encode_bert_input(
            token_to_idx, _bert_words(args.text, config), _bert_words(args.second, config),
            config["max_len"])
    except ValueError as e:
        raise DataError(str(e)) from None
    with torch.no_grad():
        encoded = encoder(ids.to(args.device), segments.to(args.device),
                          valid_lens.to(args.device))[0].float().cpu()  # (L, H)
    print("tokens:", " ".join(tokens))
    print(f"token encodings: {tuple(encoded.shape)}; <cls> encoding: ({encoded.shape[1]},)")
    print("<cls>[:8]:", " ".join(f"{v:.4f}" for v in encoded[0, :8].tolist()))
    if args.out:
        torch.save({"cls": encoded[0], "encodings": encoded, "tokens": tokens,
                    "segments": segments[0]}, args.out)
        print(f"saved to {args.out}")
    return 0


def cmd_generate(args: argparse.Namespace) -> int:
    """``generate``: continue a prompt with an exported language model (plain PyTorch)."""
    import torch

    from d2l_lightning.datamodules.text import TEXT_PREPROCESSORS, Vocab, join_tokens, prompt_tokens
    from d2l_lightning.models import ExportError, load_exported
    from d2l_lightning.models.generate import generate

    model, config = load_exported(args.export, map_location=args.device)
    if config.get("task") != "language_modeling":
        raise ExportError(f"{args.export} holds a '{config.get('task')}' model, "
                          "not a language model")
    require(config, args.export)
    vocab, text = Vocab.from_tokens(config["vocab"]), config["text"]
    prefix = text["prefix"] if args.prefix is None else args.prefix
    tokens = prompt_tokens(prefix, text["level"], text["preprocess"])  # as the training text
    clean = TEXT_PREPROCESSORS.get(text["preprocess"], lambda t: t)
    dropped = sorted({c for c in prefix if not c.isspace() and clean(c) != c.lower()})
    if dropped:
        print("note: the training text's preprocessing does not keep these characters of the "
              "prefix: " + " ".join(map(repr, dropped)), file=sys.stderr)
    if not tokens:
        raise DataError(f"the prefix {prefix!r} holds no token after preprocessing")
    unknown = sorted({t for t in tokens if t not in vocab})
    if unknown:
        print(f"note: not in the vocabulary, read as <unk>: {' '.join(map(repr, unknown))}",
              file=sys.stderr)
    gen = torch.Generator(device=args.device).manual_seed(args.seed)
    new = generate(model, vocab.encode(tokens).to(args.device), args.num_tokens,
                   temperature=args.temperature, top_k=args.top_k, generator=gen)
    sep = "" if text["level"] == "char" else " "
    print(join_tokens(tokens, text["level"]) + sep
          + join_tokens(vocab.to_tokens(new.cpu()), text["level"]))
    return 0


class _DefaultsFormatter(argparse.HelpFormatter):
    """Each option's default, once, unless it is unset or its help says it."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        unset = action.default is None or action.default is False
        if ("default" not in text and action.option_strings and not unset
                and action.default != argparse.SUPPRESS):
            text += " (default: %(default)s)"
        return text


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, not the whole usage block
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def build_parser() -> argparse.ArgumentParser:
    """CLI with one sub-command per task family."""
    p = _Parser(description=__doc__.split("\n\n")[0],
                formatter_class=argparse.RawDescriptionHelpFormatter,
                epilog=__doc__.split("\n\n", 1)[1])
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)
    sub.add_parser = _with_formatter(sub.add_parser)
    c = sub.add_parser("classify", help="label images with an exported image classifier")
    c.add_argument("--export", required=True, help="export folder (RUN_DIR/export)")
    c.add_argument("inputs", nargs="*", help="PNG/JPEG files or IDX image files")
    c.add_argument("--top-k", type=COUNT, default=3, help="labels shown per image")
    c.add_argument("--limit", type=COUNT0, default=0, help="classify at most N images (0: all)")
    c.add_argument("--eval", action="store_true", help="print accuracy on a dataset split")
    c.add_argument("--data", choices=IDX_DATA, help="dataset for --eval")
    c.add_argument("--split", default="test", choices=("train", "val", "test"),
                   help="split for --eval")
    c.add_argument("--data-dir", help="data root (else $D2L_DATA_DIR, else ./data)")
    c.add_argument("--seed", type=int, default=0, help="train/val split seed used in training")
    c.add_argument("--val-size", type=COUNT,
                   help="validation size used in training (default: 1/12 of train)")
    c.add_argument("--data-setting", default="split", choices=("split", "book"),
                   help="data setting used in training (book: train is all 60,000 images, "
                   "val is the test set)")
    c.add_argument("--batch-size", type=COUNT, default=512, help="images per forward pass")
    c.add_argument("--device", default="cpu", help="torch device, e.g. cuda:0")
    c.set_defaults(func=cmd_classify)
    t = sub.add_parser("translate", help="translate English sentences with an exported model")
    t.add_argument("--export", required=True, help="export folder (RUN_DIR/export)")
    t.add_argument("sentences", nargs="*", help="English sentences")
    t.add_argument("--beam-size", type=COUNT, help="beam width (default: the export's; 1: greedy)")
    t.add_argument("--length-penalty", type=FLOAT, help="GNMT length-penalty alpha")
    t.add_argument("--max-len", type=COUNT, help="most generated tokens (default: the export's)")
    t.add_argument("--device", default="cpu", help="torch device, e.g. cuda:0")
    t.set_defaults(func=cmd_translate)
    f = sub.add_parser("fill-mask", help="top-k tokens at each <mask> (exported BERT)")
    f.add_argument("--export", required=True, help="export folder (RUN_DIR/export)")
    f.add_argument("text", help='e.g. "the time <mask> was invented ."')
    f.add_argument("second", nargs="?", help="optional second sentence (segment B)")
    f.add_argument("--top-k", type=COUNT, default=5, help="tokens shown per <mask>")
    f.add_argument("--device", default="cpu", help="torch device, e.g. cuda:0")
    f.set_defaults(func=cmd_fill_mask)
    e = sub.add_parser("embed", help="<cls> and token encodings (exported BERT or encoder)")
    e.add_argument("--export", required=True,
                   help="RUN_DIR/export/encoder (or the whole model's RUN_DIR/export)")
    e.add_argument("text", help="a sentence")
    e.add_argument("second", nargs="?", help="optional second sentence (segment B)")
    e.add_argument("--out", help="save {cls, encodings, tokens, segments} with torch.save")
    e.add_argument("--device", default="cpu", help="torch device, e.g. cuda:0")
    e.set_defaults(func=cmd_embed)
    g = sub.add_parser("generate", help="continue a prompt with an exported language model")
    g.add_argument("--export", required=True, help="export folder (RUN_DIR/export)")
    g.add_argument("--prefix", help="prompt (default: the one sampled during training)")
    g.add_argument("--num-tokens", type=COUNT0, default=100, help="tokens to generate")
    g.add_argument("--temperature", type=FLOAT0, default=0.0,
                   help="sampling temperature (0: greedy)")
    g.add_argument("--top-k", type=COUNT0, default=0, help="sample among the k likeliest (0: all)")
    g.add_argument("--seed", type=int, default=0, help="sampling seed")
    g.add_argument("--device", default="cpu", help="torch device, e.g. cuda:0")
    g.set_defaults(func=cmd_generate)
    from d2l_lightning.cli.predict_eval import add_eval_parser  # no torch: --help stays light

    add_eval_parser(sub)
    return p


def _with_formatter(add_parser):
    def add(*args, **kwargs):
        return add_parser(*args, formatter_class=_DefaultsFormatter, **kwargs)
    return add


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the exit code."""
    args = build_parser().parse_args(argv)
    from d2l_lightning.models import ExportError  # after parsing: --help imports no torch

    try:
        return args.func(args)
    except (ExportError, DataError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:  # a download or a long generation: one line, no traceback
        print("error: stopped by SIGINT (Ctrl-C)", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
