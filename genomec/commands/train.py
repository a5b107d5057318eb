"""`genomec train mlm|glue`: pre-train a genome's model with masked language modelling, or
fine-tune one on a GLUE task. Thin wrappers over `genomec.models.training`, imported only
when a training command runs (transformers is slow to import; other commands stay fast).
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

# Keys of the results printed for people (all of them go to --json, except the settings).
MLM_SUMMARY = ("initial_loss", "final_loss", "initial_accuracy", "final_accuracy", "steps", "tokens_per_second")


def register(sub) -> None:
    p = sub.add_parser("train", help="pre-train (mlm) or fine-tune (glue) a genome's model")
    tasks = p.add_subparsers(dest="task", metavar="TASK", required=True)

    mlm = tasks.add_parser("mlm", help="masked language modelling on a plain-text corpus")
    mlm.add_argument("--genome", required=True, metavar="G", help="a model genome (or one attention graph, used for every layer)")
    mlm.add_argument("--corpus", metavar="PATH", help="UTF-8 text file or folder (default: Python's own documentation)")
    mlm.add_argument("--tokenizer", metavar="DIR", help="a saved tokenizer (default: train a WordPiece tokenizer on the corpus)")
    mlm.add_argument("--steps", type=int, required=True, metavar="S")
    mlm.add_argument("--out", metavar="DIR", help="model directory to write (default: runs/mlm-<genome file name>)")
    mlm.add_argument("--seq-len", type=int, default=128)
    mlm.add_argument("--batch-size", type=int, default=8)
    mlm.add_argument("--lr", type=float, default=1e-3, help="peak learning rate (linear warmup, then linear decay)")
    mlm.add_argument("--warmup", type=float, default=0.1, metavar="FRACTION", help="fraction of the steps spent warming up")
    mlm.add_argument("--vocab-size", type=int, default=8192, help="of a tokenizer trained here")
    mlm.add_argument("--checkpoint-every", type=int, default=50, metavar="STEPS")
    _common(mlm)
    for size in ("hidden-size", "num-heads", "intermediate-size"):
        mlm.add_argument(f"--{size}", type=int, help="override the genome's config")
    mlm.set_defaults(handler=handle_mlm)

    glue = tasks.add_parser("glue", help="fine-tune a pre-trained model on a GLUE task; report its metric")
    glue.add_argument("--task", required=True, metavar="T", help="cola, sst2, mrpc, stsb, qqp, mnli, qnli, rte, wnli")
    glue.add_argument("--data", required=True, metavar="DIR", help="GLUE directory in the standard TSV layout")
    glue.add_argument("--model", required=True, metavar="DIR", help="a model directory written by `genomec train mlm`")
    glue.add_argument("--out", metavar="DIR", help="fine-tuned model directory (default: MODEL/glue/TASK)")
    glue.add_argument("--epochs", type=float, default=3.0)
    glue.add_argument("--steps", type=int, metavar="S", help="train for S steps instead of --epochs")
    glue.add_argument("--seq-len", type=int, default=128)
    glue.add_argument("--batch-size", type=int, default=32)
    glue.add_argument("--lr", type=float, default=1e-4)
    glue.add_argument("--checkpoint-every", type=int, default=200, metavar="STEPS")
    glue.add_argument("--skip-bad-rows", action="store_true", help="skip malformed TSV rows instead of stopping")
    _common(glue)
    glue.set_defaults(handler=handle_glue)


def _common(p) -> None:
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--backend", choices=("auto", "reference", "triton"), default="auto", help="attention backend")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--json", action="store_true", help="print the results as one JSON line (the last line)")
    p.add_argument("-v", "--verbose", action="store_true", help="tracebacks on failure")


def _quiet_libraries(command: str = "train") -> None:
    """Our progress bar and messages only; the attention backend's choice is shown."""
    import transformers

    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    backend_log = logging.getLogger("genomec.models")
    if not backend_log.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter(f"genomec {command}: %(message)s"))
        backend_log.addHandler(handler)
        backend_log.setLevel(logging.INFO)


def _positive(args, *names) -> None:
    from genomec.cli import UsageError

    for name in names:
        value = getattr(args, name)
        if value is not None and value < 1:
            raise UsageError(f"--{name.replace('_', '-')} must be at least 1, got {value}")


def handle_mlm(args) -> int:
    from genomec.cli import UsageError
    from genomec.data import DataError

    _positive(args, "steps", "seq_len", "batch_size", "vocab_size", "checkpoint_every", "hidden_size", "num_heads", "intermediate_size")
    _quiet_libraries()
    from genomec.models.training import MLMSettings, train_mlm

    settings = MLMSettings(
        seq_len=args.seq_len, batch_size=args.batch_size, learning_rate=args.lr, warmup_fraction=args.warmup,
        vocab_size=args.vocab_size, seed=args.seed, checkpoint_every=args.checkpoint_every,
    )
    overrides = {k: getattr(args, k) for k in ("hidden_size", "num_heads", "intermediate_size") if getattr(args, k) is not None}
    overrides["attention_backend"] = args.backend
    out = args.out or str(Path("runs") / f"mlm-{Path(args.genome).stem}")
    try:
        results = train_mlm(
            args.genome, out, args.steps, corpus=args.corpus, tokenizer_dir=args.tokenizer, settings=settings,
            model_overrides=overrides, progress=not args.no_progress,
        )
    except DataError as e:
        raise UsageError(str(e)) from None
    except KeyboardInterrupt:
        _say_how_to_resume()
        raise
    _report(args, results, MLM_SUMMARY)
    return 0


def handle_glue(args) -> int:
    from genomec.cli import UsageError
    from genomec.data import DataError

    _positive(args, "steps", "seq_len", "batch_size", "checkpoint_every")
    if args.epochs <= 0:
        raise UsageError(f"--epochs must be positive, got {args.epochs}")
    _quiet_libraries()
    from genomec.models.training import GlueSettings, train_glue

    settings = GlueSettings(
        seq_len=args.seq_len, batch_size=args.batch_size, learning_rate=args.lr, epochs=args.epochs,
        seed=args.seed, checkpoint_every=args.checkpoint_every,
    )
    try:
        results = train_glue(
            args.task, args.data, args.model, out=args.out, steps=args.steps, settings=settings,
            skip_malformed=args.skip_bad_rows, progress=not args.no_progress, backend=args.backend,
        )
    except DataError as e:
        raise UsageError(str(e)) from None
    except KeyboardInterrupt:
        _say_how_to_resume()
        raise
    _report(args, results, ("task", "main_metric", "score", "metrics", "steps"))
    return 0


def _say_how_to_resume() -> None:
    print("genomec train: stopped; run the same command again to resume from the last checkpoint", file=sys.stderr)


def _report(args, results: dict, summary_keys) -> None:
    if args.json:
        print(json.dumps({k: v for k, v in results.items() if k != "settings"}))
        return
    for key in summary_keys:
        value = results[key]
        print(f"{key}: {value:.4f}" if isinstance(value, float) else f"{key}: {json.dumps(value) if isinstance(value, dict) else value}")
    print(f"wrote {results['out']}")
